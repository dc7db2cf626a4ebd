-- name: stage-distribution
-- description: Per layer, how many tokens are in the rapid, stabilisation and mutation stage (the stage histogram of a whole dataset; every token is assumed to have every layer).
-- The definitions: docs/analyses.md, "Stages".
WITH
-- include: token_layers
-- include: stages
layer_list AS (SELECT DISTINCT layer FROM l),
c_hist AS (SELECT critical_layer AS layer, COUNT(*) AS n FROM stages WHERE critical_layer IS NOT NULL GROUP BY critical_layer),
m_hist AS (SELECT mutation_layer AS layer, COUNT(*) AS n FROM stages WHERE mutation_layer IS NOT NULL GROUP BY mutation_layer),
reached AS (  -- tokens whose critical layer is at or before each layer (cumulative, on the small histograms)
    SELECT ll.layer, SUM(h.n) AS n FROM layer_list ll JOIN c_hist h ON h.layer <= ll.layer GROUP BY ll.layer
),
mutated AS (
    SELECT ll.layer, SUM(h.n) AS n FROM layer_list ll JOIN m_hist h ON h.layer <= ll.layer GROUP BY ll.layer
),
total AS (SELECT COUNT(*) AS n_tokens FROM stages)
SELECT ll.layer,
       total.n_tokens - COALESCE(r.n, 0) AS n_rapid,
       COALESCE(r.n, 0) - COALESCE(m.n, 0) AS n_stable,
       COALESCE(m.n, 0) AS n_mutation,
       total.n_tokens
FROM layer_list ll
CROSS JOIN total
LEFT JOIN reached r ON r.layer = ll.layer
LEFT JOIN mutated m ON m.layer = ll.layer
ORDER BY ll.layer
