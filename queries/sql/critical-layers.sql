-- name: critical-layers
-- description: Per token: the critical layer (first layer with top1_prob >= tau; or, by definition, where the emitted token stands out) and its stabilisation variant (first layer after which js_prev stays below theta).
-- The definitions: docs/analyses.md, "Critical layer".
WITH
-- include: token_layers
-- include: critical_layer
-- include: critical_layer_js
SELECT t.token_uid, t.sample_id, t.step, t.piece, t.object, t.label, $lens AS lens, $definition AS definition,
       p.critical_layer, s.critical_layer_js, p.last_layer
FROM crit p
JOIN tokens t ON t.token_uid = p.token_uid
LEFT JOIN settled s ON s.token_uid = p.token_uid
ORDER BY t.token_uid
