"""Edit requests that correct a co-occurrence hallucination, read off a labelled caption store.

For every caption in which ``partner`` is a hallucinated object (labelled so in ``tokens``) and the
response before it mentions ``trigger``, one request: the answer up to the hallucinated word is the
given ``prefix``, the constraint is the trigger's last mention in it (the key is read there), and the
target is the first object of the image's ground truth (``annotations.truth``) that the whole caption
missed — the object a grounded caption would have named in the hallucination's place. A caption that
missed nothing would need an invented continuation: it is counted (``nothing_left``), not guessed.
"""

from __future__ import annotations

import json
from pathlib import Path

from kevo_store import open_store

SQL = """
SELECT s.sample_id, s.item_id, s.prompt, s.response, s.annotations, s.image_id, t.char_start
FROM tokens t JOIN samples s USING (sample_id)
WHERE t.role = 'generated' AND t.label = 'hallucinated' AND t.is_word_start AND lower(t.object) = lower($partner)
ORDER BY s.sample_id, t.step
"""


def hallucination_requests(store: str, trigger: str, partner: str, images: str | Path) -> tuple[list[dict], dict]:
    """(requests, counts) for the captions of ``store`` that hallucinate ``partner`` after ``trigger``;
    ``images`` is the folder the store's ``samples.image_id`` are relative to."""
    s = open_store(store)
    rows = s.sql(SQL.replace("$partner", "'" + partner.replace("'", "''") + "'")).to_dicts()
    out, counts, seen = [], {"hallucinated": 0, "no_trigger": 0, "nothing_left": 0}, set()
    for r in rows:
        if r["sample_id"] in seen:
            continue
        seen.add(r["sample_id"])
        counts["hallucinated"] += 1
        prefix = r["response"][: r["char_start"]].rstrip()
        words = prefix.lower().replace(",", " ").replace(".", " ").split()
        if trigger.lower() not in words:
            counts["no_trigger"] += 1
            continue
        truth = json.loads(r["annotations"]).get("truth", [])
        said = set(r["response"].lower().replace(",", " ").replace(".", " ").split())
        left = [o for o in truth if o.lower() not in said]
        if not left:
            counts["nothing_left"] += 1
            continue
        image = str(Path(images) / r["image_id"])
        out.append({"id": r["item_id"], "image": image, "question": r["prompt"], "constraint": trigger,
                    "constraint_in": "prefix", "prefix": prefix, "target": left[0],
                    "hallucinated": partner, "response": r["response"]})
    counts["requests"] = len(out)
    return out, counts
