-- fragment: token_layers
-- description: The lens rows of the chosen tokens, one per (token, layer): what every per-token definition reads.
-- include: lens
-- param role: str = 'generated'   -- which tokens: generated | prompt | image
-- param label: str = ''           -- only tokens with this object label (hallucinated | correct | safe); '' = all tokens
l AS (
    SELECT y.token_uid, y.layer, y.top1_id, y.top1_prob, y.js_prev, y.js_final, y.p_out, y.rank_out
    FROM layers y JOIN tokens t ON t.token_uid = y.token_uid
    WHERE y.lens = $lens AND t.role = $role AND ($label = '' OR t.label = $label)
)
