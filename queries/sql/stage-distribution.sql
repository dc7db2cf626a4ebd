-- name: stage-distribution
-- description: Per layer, how many tokens are in the rapid, stabilisation and mutation stage (the stage histogram of a whole dataset; every token is assumed to have every layer).
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
first_event AS (SELECT token_uid, MIN(mutation_layer) AS mutation_layer FROM events GROUP BY token_uid),
stages AS (  -- rapid evolution [0, c), stabilisation [c, m), mutation [m, L]
    SELECT c.token_uid, c.critical_layer, f.mutation_layer, c.last_layer,
           COALESCE(c.critical_layer, c.last_layer + 1) AS rapid_layers,
           CASE WHEN c.critical_layer IS NULL THEN 0
                ELSE COALESCE(f.mutation_layer, c.last_layer + 1) - c.critical_layer END AS stable_layers,
           CASE WHEN f.mutation_layer IS NULL THEN 0 ELSE c.last_layer + 1 - f.mutation_layer END AS mutation_layers
    FROM crit c LEFT JOIN first_event f ON f.token_uid = c.token_uid
),
layer_list AS (SELECT DISTINCT layer FROM l),
c_hist AS (SELECT critical_layer AS layer, COUNT(*) AS n FROM stages WHERE critical_layer IS NOT NULL GROUP BY critical_layer),
m_hist AS (SELECT mutation_layer AS layer, COUNT(*) AS n FROM stages WHERE mutation_layer IS NOT NULL GROUP BY mutation_layer),
reached AS (  -- tokens whose critical layer is at or before each layer (cumulative, on the small histograms)
    SELECT ll.layer, SUM(h.n) AS n FROM layer_list ll JOIN c_hist h ON h.layer <= ll.layer GROUP BY ll.layer
),
mutated AS (
    SELECT ll.layer, SUM(h.n) AS n FROM layer_list ll JOIN m_hist h ON h.layer <= ll.layer GROUP BY ll.layer
),
total AS (SELECT COUNT(*) AS n_tokens FROM stages)
SELECT ll.layer,
       total.n_tokens - COALESCE(r.n, 0) AS n_rapid,
       COALESCE(r.n, 0) - COALESCE(m.n, 0) AS n_stable,
       COALESCE(m.n, 0) AS n_mutation,
       total.n_tokens
FROM layer_list ll
CROSS JOIN total
LEFT JOIN reached r ON r.layer = ll.layer
LEFT JOIN mutated m ON m.layer = ll.layer
ORDER BY ll.layer
