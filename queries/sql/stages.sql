-- name: stages
-- description: Per token, the three stages: rapid evolution [0, critical), stabilisation [critical, mutation), mutation [mutation, L] (lengths in layers).
-- The definitions: docs/analyses.md, "Stages".
WITH
-- include: token_layers
-- include: stages
SELECT t.token_uid, t.sample_id, t.step, t.piece, t.object, t.label, $lens AS lens,
       g.critical_layer, g.mutation_layer, g.rapid_layers, g.stable_layers, g.mutation_layers, g.last_layer
FROM stages g JOIN tokens t ON t.token_uid = g.token_uid
ORDER BY t.token_uid
