-- name: displaced-candidates
-- description: Which candidates mutation events displace, by token class (the paper's "water" instead of "camera"), most frequent first.
-- The definitions: docs/analyses.md, "Mutation events".
WITH
-- include: token_layers
-- include: mutation_events
SELECT COALESCE(t.label, 'non-object') AS token_class, e.displaced_id, v.piece AS displaced_piece,
       COUNT(*) AS n_events, COUNT(DISTINCT e.token_uid) AS n_tokens,
       AVG(e.mutation_layer) AS mutation_layer_mean
FROM events e
JOIN tokens t ON t.token_uid = e.token_uid
LEFT JOIN vocab v ON v.vocab_id = e.displaced_id
WHERE e.displaced_id IS NOT NULL
GROUP BY COALESCE(t.label, 'non-object'), e.displaced_id, v.piece
ORDER BY token_class, n_events DESC, e.displaced_id
