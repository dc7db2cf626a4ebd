-- name: hallucination-curves
-- description: Per token class and layer: p_out curve (median, IQR, mean), and how many tokens have their critical layer / a mutation event there.
-- param lens: str = 'final_norm'   -- lens mode: final_norm | raw
-- param role: str = 'generated'    -- which tokens: generated | prompt | image
-- param tau: float = 0.5           -- top-1 probability that defines the critical layer
-- param min_held: int = 3          -- layers (from the critical layer on) a displaced candidate must have held top-1
-- param js_multiple: float = 5.0   -- a js_prev jump is js_prev > js_multiple x median js_prev after the critical layer ...
-- param js_min: float = 0.05       -- ... and > js_min nats
-- The CTEs up to `events` are those of mutation-events.sql (kept inline so this file runs on its own).
WITH l AS (
    SELECT y.token_uid, y.layer, y.top1_id, y.top1_prob, y.js_prev, y.p_out
    FROM layers y JOIN tokens t ON t.token_uid = y.token_uid
    WHERE y.lens = $lens AND t.role = $role
),
crit AS (
    SELECT token_uid, MAX(layer) AS last_layer,
           MIN(CASE WHEN top1_prob >= $tau THEN layer END) AS critical_layer
    FROM l GROUP BY token_uid
),
w AS (  -- one ordered pass from the critical layer on: the previous layer's top-1 and js_prev
    SELECT l.token_uid, l.layer, l.top1_id, l.top1_prob, l.js_prev, l.p_out, c.critical_layer,
           LAG(l.top1_id) OVER (PARTITION BY l.token_uid ORDER BY l.layer) AS top1_before,
           LAG(l.js_prev) OVER (PARTITION BY l.token_uid ORDER BY l.layer) AS js_before
    FROM l JOIN crit c ON c.token_uid = l.token_uid
    WHERE l.layer >= c.critical_layer
),
stable AS (  -- the stable-stage median of js_prev: layers after the critical layer (a median ignores the jumps)
    SELECT token_uid, MEDIAN(js_prev) AS js_median FROM w WHERE layer > critical_layer GROUP BY token_uid
),
starts AS (  -- layers where a top-1 run begins (the critical layer, then every change of top-1)
    SELECT token_uid, layer, top1_before AS displaced_id,
           LAG(layer) OVER (PARTITION BY token_uid ORDER BY layer) AS held_since
    FROM w WHERE layer = critical_layer OR top1_id <> top1_before
),
top1_events AS (  -- the top-1 leaves a candidate that held it >= min_held layers (counted from c)
    SELECT token_uid, layer AS mutation_layer, displaced_id, layer - held_since AS held_layers
    FROM starts WHERE held_since IS NOT NULL AND layer - held_since >= $min_held
),
js_events AS (  -- js_prev crosses max(js_multiple x median, js_min) upwards after the critical layer
    SELECT w.token_uid, w.layer AS mutation_layer
    FROM w JOIN stable s ON s.token_uid = w.token_uid
    WHERE w.layer > w.critical_layer
      AND w.js_prev > GREATEST($js_multiple * s.js_median, $js_min)
      AND (w.js_before IS NULL OR w.js_before <= GREATEST($js_multiple * s.js_median, $js_min))
),
events AS (
    SELECT token_uid, mutation_layer, MAX(is_top1) AS is_top1, MAX(is_js) AS is_js,
           MAX(displaced_id) AS displaced_id, MAX(held_layers) AS held_layers
    FROM (SELECT token_uid, mutation_layer, 1 AS is_top1, 0 AS is_js, displaced_id, held_layers FROM top1_events
          UNION ALL
          SELECT token_uid, mutation_layer, 0 AS is_top1, 1 AS is_js,
                 CAST(NULL AS INTEGER) AS displaced_id, CAST(NULL AS INTEGER) AS held_layers FROM js_events) u
    GROUP BY token_uid, mutation_layer
),
cls AS (SELECT token_uid, COALESCE(label, 'non-object') AS token_class FROM tokens),
curves AS (
    SELECT cls.token_class, l.layer, COUNT(*) AS n_tokens,
           MEDIAN(l.p_out) AS p_out_median,
           QUANTILE_CONT(l.p_out, 0.25) AS p_out_q25,
           QUANTILE_CONT(l.p_out, 0.75) AS p_out_q75,
           AVG(l.p_out) AS p_out_mean
    FROM l JOIN cls ON cls.token_uid = l.token_uid
    GROUP BY cls.token_class, l.layer
),
crit_n AS (  -- counted on the small per-token tables, not by joining them back onto every layer row
    SELECT cls.token_class, c.critical_layer AS layer, COUNT(*) AS n_critical
    FROM crit c JOIN cls ON cls.token_uid = c.token_uid
    WHERE c.critical_layer IS NOT NULL
    GROUP BY cls.token_class, c.critical_layer
),
events_n AS (
    SELECT cls.token_class, e.mutation_layer AS layer, COUNT(*) AS n_mutation_events
    FROM events e JOIN cls ON cls.token_uid = e.token_uid
    GROUP BY cls.token_class, e.mutation_layer
)
SELECT cu.token_class, cu.layer, cu.n_tokens, cu.p_out_median, cu.p_out_q25, cu.p_out_q75, cu.p_out_mean,
       COALESCE(cn.n_critical, 0) AS n_critical, COALESCE(en.n_mutation_events, 0) AS n_mutation_events
FROM curves cu
LEFT JOIN crit_n cn ON cn.token_class = cu.token_class AND cn.layer = cu.layer
LEFT JOIN events_n en ON en.token_class = cu.token_class AND en.layer = cu.layer
ORDER BY cu.token_class, cu.layer
