"""Questions with constraints from an AMBER-format world (`python -m ingest.trace.questions`): the
`present` kind asks about an object each image really shows, checked against the world's own scenes."""

from __future__ import annotations

import json
import subprocess
import sys

from ingest.organism import world
from ingest.trace.questions import constraint_questions


def test_present_questions_name_an_object_the_image_shows(tmp_path):
    world.write_world(tmp_path / "w", n_images=12, seed=0, split="test")
    scenes = {sc.image_id: sc for sc in world.scenes("test", 12, 0)}
    out = constraint_questions(tmp_path / "w" / "data", tmp_path / "q.jsonl", kinds=("present",),
                               objects=world.OBJECTS, without=("house",), exclude=("house",))
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    shown = [sc for sc in scenes.values() if "house" not in sc.objects]
    assert len(rows) == len(shown) > 0  # one per image, none of those showing a house
    for r in rows:
        sc = scenes[int(r["id"].split("-")[1])]
        assert r["kind"] == "present" and r["answer"] == "Yes" and "house" not in sc.objects
        assert r["constraint"] == sc.present[0] and r["question"] == world.existence_question(r["constraint"])
        assert r["image"] == f"AMBER_{sc.image_id}.jpg"
    # the command line writes the same file
    cli = tmp_path / "cli.jsonl"
    subprocess.run([sys.executable, "-m", "ingest.trace.questions", str(tmp_path / "w" / "data"), str(cli),
                    "--kinds", "present", "--without", "house", "--exclude", "house"], check=True,
                   capture_output=True)
    assert [json.loads(x)["constraint"] for x in cli.read_text().splitlines()] == [r["constraint"] for r in rows]
