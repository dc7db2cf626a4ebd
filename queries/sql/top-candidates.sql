-- name: top-candidates
-- description: The paper's Fig. 2 data for one token: the top-1 tokens of the layers from the critical layer on, and their probability at every layer.
-- The definitions: docs/analyses.md, "Mutation events".
-- param token_uid: int            -- the token (required; e.g. from mutation-events)
-- include: lens
WITH l AS (
    SELECT token_uid, layer, top1_id, top1_prob, p_out, rank_out FROM layers
    WHERE token_uid = $token_uid AND lens = $lens
),
k AS (
    SELECT layer, vocab_id, prob, rank FROM topk WHERE token_uid = $token_uid AND lens = $lens
),
emitted AS (SELECT token_id FROM tokens WHERE token_uid = $token_uid),
-- include: critical_layer
cand AS (  -- from the critical layer on (the last layer if the token never stands out)
    SELECT l.top1_id AS vocab_id, MIN(l.layer) AS first_top1_layer, COUNT(*) AS n_top1_layers
    FROM l CROSS JOIN crit
    WHERE l.layer >= COALESCE(crit.critical_layer, crit.last_layer)
    GROUP BY l.top1_id
),
grid AS (SELECT l.layer, l.p_out, cand.vocab_id, cand.first_top1_layer, cand.n_top1_layers FROM l CROSS JOIN cand)
SELECT $token_uid AS token_uid, g.layer, g.vocab_id, v.piece,
       COALESCE(k.prob, CASE WHEN g.vocab_id = e.token_id THEN g.p_out END) AS prob,
       k.rank, g.vocab_id = e.token_id AS is_emitted, crit.critical_layer,
       g.first_top1_layer, g.n_top1_layers
FROM grid g
CROSS JOIN emitted e
CROSS JOIN crit
LEFT JOIN k ON k.layer = g.layer AND k.vocab_id = g.vocab_id
LEFT JOIN vocab v ON v.vocab_id = g.vocab_id
ORDER BY g.first_top1_layer, g.vocab_id, g.layer
