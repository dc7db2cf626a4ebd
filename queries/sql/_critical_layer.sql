-- fragment: critical_layer
-- description: Per token, the critical layer and the last layer (docs/analyses.md, "Critical layer").
-- reads: l
-- param tau: float = 0.5          -- top-1 probability at which knowledge "stands out from the vocabulary"
-- param definition: str = 'top1' in (top1, emitted, emitted_stays)  -- top1 = the paper's (any token's top-1 p >= tau); emitted: the emitted token is top-1 with p_out >= tau; emitted_stays: ... and stays top-1 to the last layer
-- The paper's definition fires on any confident candidate, so a language prior or a template word
-- can stand out at layer 1; 'emitted' asks when the token the model finally emits stands out
-- (rank_out = 1 and p_out >= tau), and 'emitted_stays' when it takes top-1 for good: the first such
-- layer after which the emitted token is top-1 at every layer up to the last (p_out >= tau at that
-- layer only). crit has a row for every token of l; critical_layer is NULL when it never stands out.
last_other AS (  -- the last layer where another token is top-1 (only needed, so only computed, for emitted_stays)
    SELECT token_uid, MAX(CASE WHEN rank_out <> 1 THEN layer END) AS last_other_layer
    FROM l WHERE $definition = 'emitted_stays' GROUP BY token_uid
),
crit AS (
    SELECT l.token_uid, MAX(l.layer) AS last_layer,
           MIN(CASE WHEN ($definition = 'top1' AND l.top1_prob >= $tau)
                      OR ($definition = 'emitted' AND l.rank_out = 1 AND l.p_out >= $tau)
                      OR ($definition = 'emitted_stays' AND l.rank_out = 1 AND l.p_out >= $tau
                          AND l.layer > COALESCE(o.last_other_layer, -1))
                    THEN l.layer END) AS critical_layer
    FROM l LEFT JOIN last_other o ON o.token_uid = l.token_uid
    GROUP BY l.token_uid
)
