-- fragment: critical_layer_js
-- description: Per token, the stabilisation variant of the critical layer: the layer after which js_prev stays below theta (docs/analyses.md, "Critical layer").
-- reads: l, crit
-- param theta: float = 0.1        -- js_prev (nats) below which consecutive layers count as settled
-- param window: int = 3           -- layers js_prev must stay below theta (0 = up to the last layer)
-- It does not depend on the critical layer's definition (crit gives only each token's last layer).
calm AS (  -- runs of consecutive layers whose js_prev is below theta (gaps and islands)
    SELECT token_uid, MIN(layer) AS run_start, MAX(layer) AS run_end
    FROM (SELECT token_uid, layer,
                 layer - ROW_NUMBER() OVER (PARTITION BY token_uid ORDER BY layer) AS run
          FROM l WHERE js_prev < $theta) r
    GROUP BY token_uid, run
),
settled AS (  -- the layer just before the first long-enough calm run
    SELECT c.token_uid, MIN(c.run_start) - 1 AS critical_layer_js
    FROM calm c JOIN crit p ON p.token_uid = c.token_uid
    WHERE ($window > 0 AND c.run_end - c.run_start + 1 >= $window)
       OR ($window <= 0 AND c.run_end = p.last_layer)
    GROUP BY c.token_uid
)
