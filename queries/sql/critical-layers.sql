-- name: critical-layers
-- description: Per token: the critical layer (first layer with top1_prob >= tau) and its stabilisation variant (first layer after which js_prev stays below theta).
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
calm AS (  -- runs of consecutive layers whose js_prev is below theta (gaps and islands)
    SELECT token_uid, MIN(layer) AS run_start, MAX(layer) AS run_end
    FROM (SELECT token_uid, layer,
                 layer - ROW_NUMBER() OVER (PARTITION BY token_uid ORDER BY layer) AS run
          FROM l WHERE js_prev < $theta) r
    GROUP BY token_uid, run
),
settled AS (  -- the layer just before the first long-enough calm run
    SELECT c.token_uid, MIN(c.run_start) - 1 AS critical_layer_js
    FROM calm c JOIN per_token p ON p.token_uid = c.token_uid
    WHERE ($window > 0 AND c.run_end - c.run_start + 1 >= $window)
       OR ($window <= 0 AND c.run_end = p.last_layer)
    GROUP BY c.token_uid
)
SELECT t.token_uid, t.sample_id, t.step, t.piece, t.object, t.label, $lens AS lens,
       p.critical_layer, s.critical_layer_js, p.last_layer
FROM per_token p
JOIN tokens t ON t.token_uid = p.token_uid
LEFT JOIN settled s ON s.token_uid = p.token_uid
ORDER BY t.token_uid
