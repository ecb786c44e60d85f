"""The loop's steps in one table: each step's name (its command, its key in `run --from-step`
and in stats.json) and the folders it writes, in the order the loop runs them.

The loop, the step commands, `RunFolder`, `publish` and the dataset card read their step names
and folder names from here; adding a step is its module (and the loop's call of it) plus a row
here. A macro-iteration's folders are `iter_<k>/<folder>/`, the final steps' `<folder>/` in the
run folder.
"""

from __future__ import annotations

from dataclasses import dataclass

INSTRUCTIONS, INITIAL, EXTENDED = "instructions", "initial", "extended"
GEN_SFT, EXT_SFT = "gen_sft", "ext_sft"
LONG, FINAL = "long", "final"


@dataclass(frozen=True)
class Step:
    """A step of the loop: `name` (its command), the `folders` it writes (a dataset each; none
    for `train`, which writes models), and whether it runs in each macro-iteration."""

    name: str
    folders: tuple[str, ...]
    per_iteration: bool = True


SELF_INSTRUCT = Step("self-instruct", (INSTRUCTIONS,))
GENERATE = Step("generate", (INITIAL,))
EXTEND = Step("extend", (EXTENDED,))
BUILD_SFT = Step("build-sft", (GEN_SFT, EXT_SFT))
TRAIN = Step("train", ())
COLLECT = Step("collect", (LONG,), per_iteration=False)
LENGTH_CONTROL = Step("length-control", (FINAL,), per_iteration=False)

#: Every step, in the order the loop runs them.
STEPS = (SELF_INSTRUCT, GENERATE, EXTEND, BUILD_SFT, TRAIN, COLLECT, LENGTH_CONTROL)
ITERATION_STEPS = tuple(step.name for step in STEPS if step.per_iteration)
FINAL_STEPS = tuple(step.name for step in STEPS if not step.per_iteration)
#: The datasets of one macro-iteration, and those made once after the last, in the loop's order.
ITERATION_FOLDERS = tuple(folder for step in STEPS if step.per_iteration for folder in step.folders)
FINAL_FOLDERS = tuple(folder for step in STEPS if not step.per_iteration for folder in step.folders)
#: The step that writes each folder.
STEP_OF_FOLDER = {folder: step.name for step in STEPS for folder in step.folders}
