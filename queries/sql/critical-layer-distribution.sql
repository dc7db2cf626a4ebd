-- name: critical-layer-distribution
-- description: Store-wide (model-level) distribution of critical layers over tokens (tau definition chosen by `definition`, and the js_prev variant); layer NULL = never reached.
-- The definitions: docs/analyses.md, "Critical layer".
WITH
-- include: token_layers
-- include: critical_layer
-- include: critical_layer_js
both_defs AS (
    SELECT p.critical_layer AS layer, 1 AS is_tau, 0 AS is_js FROM crit p
    UNION ALL
    SELECT s.critical_layer_js AS layer, 0 AS is_tau, 1 AS is_js
    FROM crit p LEFT JOIN settled s ON s.token_uid = p.token_uid
),
total AS (SELECT COUNT(*) AS n_tokens FROM crit)
SELECT d.layer, SUM(d.is_tau) AS n_critical, SUM(d.is_js) AS n_critical_js,
       CAST(SUM(d.is_tau) AS DOUBLE) / MAX(total.n_tokens) AS frac_critical,
       CAST(SUM(d.is_js) AS DOUBLE) / MAX(total.n_tokens) AS frac_critical_js,
       MAX(total.n_tokens) AS n_tokens
FROM both_defs d CROSS JOIN total
GROUP BY d.layer
ORDER BY d.layer NULLS LAST
