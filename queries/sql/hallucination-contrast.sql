-- name: hallucination-contrast
-- description: Hallucinated vs correct object tokens (and the other classes): mutation rate, critical and mutation layers, displaced candidates, final p_out.
-- The definitions: docs/analyses.md, "Hallucination link".
WITH
-- include: token_layers
-- include: stages
per_token AS (
    SELECT COALESCE(t.label, 'non-object') AS token_class, g.token_uid, g.critical_layer, g.mutation_layer
    FROM stages g JOIN tokens t ON t.token_uid = g.token_uid
),
n_events AS (SELECT token_uid, COUNT(*) AS n_events, SUM(CASE WHEN displaced_id IS NOT NULL THEN 1 ELSE 0 END) AS n_displaced
             FROM events GROUP BY token_uid),
final AS (SELECT l.token_uid, l.p_out FROM l JOIN crit c ON c.token_uid = l.token_uid AND l.layer = c.last_layer)
SELECT p.token_class, COUNT(*) AS n_tokens,
       SUM(CASE WHEN p.mutation_layer IS NOT NULL THEN 1 ELSE 0 END) AS n_mutated,
       CAST(SUM(CASE WHEN p.mutation_layer IS NOT NULL THEN 1 ELSE 0 END) AS DOUBLE) / COUNT(*) AS mutation_rate,
       SUM(COALESCE(e.n_events, 0)) AS n_events,
       SUM(COALESCE(e.n_displaced, 0)) AS n_displaced,
       SUM(CASE WHEN p.critical_layer IS NOT NULL THEN 1 ELSE 0 END) AS n_with_critical,
       AVG(p.critical_layer) AS critical_layer_mean,
       MEDIAN(p.critical_layer) AS critical_layer_median,
       AVG(p.mutation_layer) AS mutation_layer_mean,
       MEDIAN(p.mutation_layer) AS mutation_layer_median,
       AVG(f.p_out) AS p_out_final_mean
FROM per_token p
LEFT JOIN n_events e ON e.token_uid = p.token_uid
LEFT JOIN final f ON f.token_uid = p.token_uid
GROUP BY p.token_class
ORDER BY CASE p.token_class WHEN 'hallucinated' THEN 0 WHEN 'correct' THEN 1 WHEN 'safe' THEN 2 ELSE 3 END
