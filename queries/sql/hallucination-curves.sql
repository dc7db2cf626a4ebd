-- name: hallucination-curves
-- description: Per token class and layer: p_out curve (median, IQR, mean), and how many tokens have their critical layer / a mutation event there.
-- The definitions: docs/analyses.md, "Hallucination link".
WITH
-- include: token_layers
-- include: mutation_events
cls AS (SELECT token_uid, COALESCE(label, 'non-object') AS token_class FROM tokens),
curves AS (
    SELECT cls.token_class, l.layer, COUNT(*) AS n_tokens,
           MEDIAN(l.p_out) AS p_out_median,
           QUANTILE_CONT(l.p_out, 0.25) AS p_out_q25,
           QUANTILE_CONT(l.p_out, 0.75) AS p_out_q75,
           AVG(l.p_out) AS p_out_mean
    FROM l JOIN cls ON cls.token_uid = l.token_uid
    GROUP BY cls.token_class, l.layer
),
crit_n AS (  -- counted on the small per-token tables, not by joining them back onto every layer row
    SELECT cls.token_class, c.critical_layer AS layer, COUNT(*) AS n_critical
    FROM crit c JOIN cls ON cls.token_uid = c.token_uid
    WHERE c.critical_layer IS NOT NULL
    GROUP BY cls.token_class, c.critical_layer
),
events_n AS (
    SELECT cls.token_class, e.mutation_layer AS layer, COUNT(*) AS n_mutation_events
    FROM events e JOIN cls ON cls.token_uid = e.token_uid
    GROUP BY cls.token_class, e.mutation_layer
)
SELECT cu.token_class, cu.layer, cu.n_tokens, cu.p_out_median, cu.p_out_q25, cu.p_out_q75, cu.p_out_mean,
       COALESCE(cn.n_critical, 0) AS n_critical, COALESCE(en.n_mutation_events, 0) AS n_mutation_events
FROM curves cu
LEFT JOIN crit_n cn ON cn.token_class = cu.token_class AND cn.layer = cu.layer
LEFT JOIN events_n en ON en.token_class = cu.token_class AND en.layer = cu.layer
ORDER BY cu.token_class, cu.layer
