"""The model card of one role (Generator or Extender) trained in one macro-iteration."""

from __future__ import annotations

from huggingface_hub import ModelCard, ModelCardData

from selflengthen.cards.common import TAGS, base_model_info, render
from selflengthen.run_folder import RunFolder
from selflengthen.train.roles import ROLE_DATASETS

_PURPOSE = {
    "generator": "The Generator answers an instruction directly; Self-Lengthen trains it on the "
    "Extender's lengthened answers, so that it writes long answers in one go.",
    "extender": "The Extender takes an instruction and a draft answer and writes a longer version "
    "of it; Self-Lengthen trains it on drafts with some lines removed, so that it adds content "
    "rather than copying.",
}


def model_card(
    run: RunFolder, repo_id: str, dataset_repo: str, iteration: int, role: str, merged: bool, license_id: str
) -> ModelCard:
    config = run.config
    base = base_model_info(config.model)
    result = run.training_result(iteration, role)
    recipe = run.training_recipe(iteration, role)
    continuation = (
        f"Continues the adapter of iteration {iteration - 1} (`iter-{iteration - 1}`), as the paper does"
        if result.get("continued_from")
        else "Trained from a fresh LoRA adapter on the base model"
    )
    card_data = ModelCardData(
        base_model=base.hub_id,
        base_model_relation="adapter" if base.hub_id else None,
        datasets=[dataset_repo],
        library_name="peft",
        license=license_id,
        pipeline_tag="text-generation",
        tags=[*TAGS, "lora", "sft", "trl", role],
    )
    return render(
        ModelCard,
        "model_card.md",
        card_data,
        pretty_name=f"Self-Lengthen {role}: {config.name}, {f'iter-{iteration}'}",
        role=role,
        role_purpose=_PURPOSE[role],
        run_name=config.name,
        iteration=iteration,
        next_iteration=iteration + 1 if iteration < config.iterations else None,
        tag=f"iter-{iteration}",
        repo_id=repo_id,
        base_model=base.description,
        base_model_short=base.short_name,
        dataset_repo=dataset_repo,
        dataset_config=ROLE_DATASETS[role],
        rows=result["rows"],
        continuation=continuation,
        loss=round(result["training_loss"], 4),
        global_step=result["global_step"],
        recipe=recipe,
        merged=merged,
        size_note=(
            "A run this small (a few optimizer steps on a handful of rows) shows the mechanics, "
            "not the method's effect."
            if result["global_step"] < 50
            else ""
        ),
    )
