-- name: critical-layers
-- description: Per token: the critical layer (first layer with top1_prob >= tau; or, by definition, where the emitted token stands out) and its stabilisation variant (first layer after which js_prev stays below theta).
-- param lens: str = 'final_norm'  -- lens mode: final_norm | raw
-- param role: str = 'generated'   -- which tokens: generated | prompt | image
-- param tau: float = 0.5          -- top-1 probability at which knowledge "stands out from the vocabulary"
-- param theta: float = 0.1        -- js_prev (nats) below which consecutive layers count as settled
-- param window: int = 3           -- layers js_prev must stay below theta (0 = up to the last layer)
-- param definition: str = 'top1' in (top1, emitted, emitted_stays)  -- critical_layer: top1 = the paper's, any token's top-1 p >= tau; emitted, emitted_stays: see below
-- param label: str = ''            -- only tokens with this object label (hallucinated | correct | safe); '' = all tokens
-- The paper's definition fires on any confident candidate, so a language prior or a template word
-- can stand out at layer 1; 'emitted' asks when the token the model finally emits stands out
-- (rank_out = 1 and p_out >= tau), and 'emitted_stays' when it takes top-1 for good: the first such
-- layer after which the emitted token is top-1 at every layer up to the last (p_out >= tau at that
-- layer only). The js_prev stabilisation variant does not depend on the definition.
WITH l AS (
    SELECT y.token_uid, y.layer, y.top1_prob, y.js_prev, y.p_out, y.rank_out
    FROM layers y JOIN tokens t ON t.token_uid = y.token_uid
    WHERE y.lens = $lens AND t.role = $role AND ($label = '' OR t.label = $label)
),
last_other AS (  -- the last layer where another token is top-1 (only needed, so only computed, for emitted_stays)
    SELECT token_uid, MAX(CASE WHEN rank_out <> 1 THEN layer END) AS last_other_layer
    FROM l WHERE $definition = 'emitted_stays' GROUP BY token_uid
),
per_token AS (
    SELECT l.token_uid, MAX(l.layer) AS last_layer,
           MIN(CASE WHEN ($definition = 'top1' AND l.top1_prob >= $tau)
                      OR ($definition = 'emitted' AND l.rank_out = 1 AND l.p_out >= $tau)
                      OR ($definition = 'emitted_stays' AND l.rank_out = 1 AND l.p_out >= $tau
                          AND l.layer > COALESCE(o.last_other_layer, -1))
                    THEN l.layer END) AS critical_layer
    FROM l LEFT JOIN last_other o ON o.token_uid = l.token_uid
    GROUP BY l.token_uid
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
SELECT t.token_uid, t.sample_id, t.step, t.piece, t.object, t.label, $lens AS lens, $definition AS definition,
       p.critical_layer, s.critical_layer_js, p.last_layer
FROM per_token p
JOIN tokens t ON t.token_uid = p.token_uid
LEFT JOIN settled s ON s.token_uid = p.token_uid
ORDER BY t.token_uid
