-- name: align-tokens
-- description: Two stores scored on the same text (a = an LVLM, b = its LLM teacher-forced on a's responses: `kevo experiment llm`): every generated token of a with the token of b holding its first character ('same' span, or 'chars' when the vocabularies cut the text differently), with both critical layers and mutation events.
-- stores: 2
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
l_a AS (
    SELECT y.token_uid, y.layer, y.top1_id, y.top1_prob, y.js_prev, y.js_final, y.p_out, y.rank_out
    FROM a.layers y JOIN a.tokens t ON t.token_uid = y.token_uid WHERE y.lens = $lens AND t.role = 'generated'
),
l_b AS (
    SELECT y.token_uid, y.layer, y.top1_id, y.top1_prob, y.js_prev, y.js_final, y.p_out, y.rank_out
    FROM b.layers y JOIN b.tokens t ON t.token_uid = y.token_uid WHERE y.lens = $lens AND t.role = 'generated'
),
-- include: mutation_events as a
-- include: mutation_events as b
ev_a AS (SELECT token_uid, COUNT(*) AS n_events, MIN(mutation_layer) AS first_mutation_layer FROM events_a GROUP BY token_uid),
ev_b AS (SELECT token_uid, COUNT(*) AS n_events, MIN(mutation_layer) AS first_mutation_layer FROM events_b GROUP BY token_uid),
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
       ca.last_layer AS n_layers_a, cb.last_layer AS n_layers_b,
       COALESCE(ea.n_events, 0) AS n_events_a, COALESCE(eb.n_events, 0) AS n_events_b,
       ea.first_mutation_layer AS first_mutation_layer_a, eb.first_mutation_layer AS first_mutation_layer_b
FROM aligned x
LEFT JOIN crit_a ca ON ca.token_uid = x.uid_a
LEFT JOIN crit_b cb ON cb.token_uid = x.uid_b
LEFT JOIN ev_a ea ON ea.token_uid = x.uid_a
LEFT JOIN ev_b eb ON eb.token_uid = x.uid_b
ORDER BY x.uid_a
