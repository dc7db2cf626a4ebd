-- name: align-tokens
-- description: Two stores scored on the same text (a = an LVLM, b = its LLM teacher-forced on a's responses: `kevo experiment llm`): every generated token of a with the token of b holding its first character ('same' span, or 'chars' when the vocabularies cut the text differently), and both critical layers.
-- stores: 2
-- The definitions: docs/analyses.md, "Skip experiments" (an LVLM and its LLM) and "Critical layer".
-- include: lens
-- b's sample of a's sample: the same sample_key, or b's item_id is a's sample_key (the text prompts
-- `kevo experiment llm` writes from a's samples); only samples whose responses are the same text.
WITH pairs AS (
    SELECT sa.sample_id AS sid_a, sb.sample_id AS sid_b, sa.sample_key
    FROM a.samples sa JOIN b.samples sb ON sb.sample_key = sa.sample_key
    WHERE sa.response = sb.response
    UNION ALL
    SELECT sa.sample_id AS sid_a, sb.sample_id AS sid_b, sa.sample_key
    FROM a.samples sa JOIN b.samples sb ON sb.item_id = sa.sample_key
    WHERE sa.response = sb.response AND sb.sample_key <> sa.sample_key
),
ta AS (  -- tokens that own characters of the response (the end-of-sequence token has none)
    SELECT token_uid, sample_id, step, piece, char_start, char_end, word, object, label
    FROM a.tokens WHERE role = 'generated' AND char_end > char_start
),
tb AS (
    SELECT token_uid, sample_id, step, piece, char_start, char_end
    FROM b.tokens WHERE role = 'generated' AND char_end > char_start
),
l_a AS (SELECT token_uid, layer, top1_prob, p_out, rank_out FROM a.layers WHERE lens = $lens),
l_b AS (SELECT token_uid, layer, top1_prob, p_out, rank_out FROM b.layers WHERE lens = $lens),
-- include: critical_layer as a
-- include: critical_layer as b
aligned AS (
    SELECT p.sample_key, ta.token_uid AS uid_a, tb.token_uid AS uid_b, ta.step AS step_a, tb.step AS step_b,
           ta.piece AS piece_a, tb.piece AS piece_b, ta.char_start, ta.char_end,
           tb.char_start AS char_start_b, tb.char_end AS char_end_b, ta.word, ta.object, ta.label
    FROM pairs p
    JOIN ta ON ta.sample_id = p.sid_a
    JOIN tb ON tb.sample_id = p.sid_b
    WHERE tb.char_start <= ta.char_start AND ta.char_start < tb.char_end
)
SELECT x.sample_key, x.uid_a, x.uid_b, x.step_a, x.step_b, x.piece_a, x.piece_b, x.char_start, x.char_end,
       x.char_start_b, x.char_end_b,
       CASE WHEN x.char_start = x.char_start_b AND x.char_end = x.char_end_b THEN 'same' ELSE 'chars' END AS alignment,
       x.word, x.object, x.label,
       ca.critical_layer AS critical_layer_a, cb.critical_layer AS critical_layer_b,
       ca.last_layer AS n_layers_a, cb.last_layer AS n_layers_b
FROM aligned x
LEFT JOIN crit_a ca ON ca.token_uid = x.uid_a
LEFT JOIN crit_b cb ON cb.token_uid = x.uid_b
ORDER BY x.uid_a
