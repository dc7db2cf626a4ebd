-- fragment: identical_prefix
-- description: Two stores' generated tokens paired by sample (sample_key) and generation step, and each sample's identical prefix: the pairs before the first step where the two tokens differ, the only tokens whose layers are comparable (docs/analyses.md, "Skip experiments").
step_tokens AS (  -- both stores' generated tokens, one column per store
    SELECT s.sample_key, t.step, t.token_uid AS uid_a, CAST(NULL AS BIGINT) AS uid_b,
           t.token_id AS id_a, CAST(NULL AS INTEGER) AS id_b
    FROM a.tokens t JOIN a.samples s ON s.sample_id = t.sample_id WHERE t.role = 'generated'
    UNION ALL
    SELECT s.sample_key, t.step, CAST(NULL AS BIGINT) AS uid_a, t.token_uid AS uid_b,
           CAST(NULL AS INTEGER) AS id_a, t.token_id AS id_b
    FROM b.tokens t JOIN b.samples s ON s.sample_id = t.sample_id WHERE t.role = 'generated'
),
pairs AS (  -- tokens at the same generation step of the same sample, paired by one GROUP BY (written as a
            -- join on sample and step, a planner may join on the step alone first: every token with every
            -- sample's token at that step)
    SELECT sample_key, step, MAX(uid_a) AS uid_a, MAX(uid_b) AS uid_b,
           CASE WHEN MAX(id_a) = MAX(id_b) THEN 1 ELSE 0 END AS same
    FROM step_tokens GROUP BY sample_key, step
    HAVING COUNT(uid_a) > 0 AND COUNT(uid_b) > 0
),
per_sample AS (
    SELECT sample_key, COUNT(*) AS n_pairs, SUM(same) AS n_same,
           MIN(CASE WHEN same = 0 THEN step END) AS first_diff_step
    FROM pairs GROUP BY sample_key
),
prefix AS (  -- identical-prefix tokens
    SELECT p.uid_a, p.uid_b FROM pairs p JOIN per_sample q ON q.sample_key = p.sample_key
    WHERE p.same = 1 AND (q.first_diff_step IS NULL OR p.step < q.first_diff_step)
)
