-- name: mutation-events
-- description: Mutation events after the critical layer: the top-1 leaves a candidate that held it >= min_held layers, or js_prev jumps above js_multiple x the token's stable-stage median.
-- The definitions: docs/analyses.md, "Mutation events".
WITH
-- include: token_layers
-- include: mutation_events
SELECT t.token_uid, t.sample_id, t.step, t.piece, t.object, t.label, $lens AS lens,
       c.critical_layer, e.mutation_layer,
       CASE WHEN e.is_top1 = 1 AND e.is_js = 1 THEN 'top1+js' WHEN e.is_top1 = 1 THEN 'top1' ELSE 'js' END AS kind,
       e.displaced_id, vd.piece AS displaced_piece, e.held_layers,
       m.top1_id AS new_top1_id, vn.piece AS new_top1_piece, m.top1_prob AS new_top1_prob,
       m.js_prev, s.js_median, m.js_prev / s.js_median AS js_ratio, m.p_out
FROM events e
JOIN tokens t ON t.token_uid = e.token_uid
JOIN crit c ON c.token_uid = e.token_uid
JOIN stable s ON s.token_uid = e.token_uid
JOIN w m ON m.token_uid = e.token_uid AND m.layer = e.mutation_layer
LEFT JOIN vocab vd ON vd.vocab_id = e.displaced_id
LEFT JOIN vocab vn ON vn.vocab_id = m.top1_id
ORDER BY t.token_uid, e.mutation_layer
