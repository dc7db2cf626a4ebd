-- name: critical-layer-distribution
-- description: Store-wide (model-level) distribution of critical layers over tokens, both definitions; layer NULL = never reached.
-- param lens: str = 'final_norm'  -- lens mode: final_norm | raw
-- param role: str = 'generated'   -- which tokens: generated | prompt | image
-- param tau: float = 0.5          -- top-1 probability at which knowledge "stands out from the vocabulary"
-- param theta: float = 0.1        -- js_prev (nats) below which consecutive layers count as settled
-- param window: int = 3           -- layers js_prev must stay below theta (0 = up to the last layer)
WITH l AS (
    SELECT y.token_uid, y.layer, y.top1_prob, y.js_prev
    FROM layers y JOIN tokens t ON t.token_uid = y.token_uid
    WHERE y.lens = $lens AND t.role = $role
),
per_token AS (
    SELECT token_uid, MAX(layer) AS last_layer,
           MIN(CASE WHEN top1_prob >= $tau THEN layer END) AS critical_layer
    FROM l GROUP BY token_uid
),
calm AS (
    SELECT token_uid, MIN(layer) AS run_start, MAX(layer) AS run_end
    FROM (SELECT token_uid, layer,
                 layer - ROW_NUMBER() OVER (PARTITION BY token_uid ORDER BY layer) AS run
          FROM l WHERE js_prev < $theta) r
    GROUP BY token_uid, run
),
settled AS (
    SELECT c.token_uid, MIN(c.run_start) - 1 AS critical_layer_js
    FROM calm c JOIN per_token p ON p.token_uid = c.token_uid
    WHERE ($window > 0 AND c.run_end - c.run_start + 1 >= $window)
       OR ($window <= 0 AND c.run_end = p.last_layer)
    GROUP BY c.token_uid
),
both_defs AS (
    SELECT p.critical_layer AS layer, 1 AS is_tau, 0 AS is_js FROM per_token p
    UNION ALL
    SELECT s.critical_layer_js AS layer, 0 AS is_tau, 1 AS is_js
    FROM per_token p LEFT JOIN settled s ON s.token_uid = p.token_uid
),
total AS (SELECT COUNT(*) AS n_tokens FROM per_token)
SELECT d.layer, SUM(d.is_tau) AS n_critical, SUM(d.is_js) AS n_critical_js,
       CAST(SUM(d.is_tau) AS DOUBLE) / MAX(total.n_tokens) AS frac_critical,
       CAST(SUM(d.is_js) AS DOUBLE) / MAX(total.n_tokens) AS frac_critical_js,
       MAX(total.n_tokens) AS n_tokens
FROM both_defs d CROSS JOIN total
GROUP BY d.layer
ORDER BY d.layer NULLS LAST
