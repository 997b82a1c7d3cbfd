"""The models of a distillation: the student (the mosaic model), its teacher and an optional oracle, checked to
read and write tokens alike, frozen but for the parameters that train."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError, invalid


@dataclass
class Models:
    """What a step runs: the `student`, `wrapped` (the same student under DDP or FSDP2, which the loss's backward
    must go through; the student itself without torchrun), the frozen `teacher` and the optional frozen `oracle`."""

    student: object
    wrapped: object
    teacher: object
    oracle: object | None


def same_tokenizer(model: str, teacher: str, oracle: str | None):
    """The teacher's tokenizer, after checking that the model's and the oracle's map every token alike."""
    from ..hf.data import tokenizer_of

    tok = tokenizer_of(teacher)
    if tok is None:
        raise UsageError(f"{teacher} has no tokenizer to read the distillation data with")
    for param, other in (("model", model), ("oracle", oracle)):
        theirs = tokenizer_of(other) if other else None
        if theirs is not None and theirs.get_vocab() != tok.get_vocab():
            problem = (f"{other}: its tokenizer maps text to tokens differently from the teacher's; distillation "
                       "compares distributions token by token")
            # the model is the command's argument, not an option: its message names it by its path alone
            raise invalid(param, problem) if param == "oracle" else UsageError(f"model {problem}")
    return tok


def load(model: str, teacher: str, oracle: str | None, device: str):
    """(student in train mode, teacher, oracle or None), all frozen (`trainable` frees what trains); the oracle's
    output vocabulary must be the teacher's."""
    from ..hf.models import load_model

    student = load_model(model, device=device)
    ref = load_model(teacher, device=device)
    vocab = ref.get_output_embeddings().weight.shape[0]
    if student.get_output_embeddings().weight.shape[0] != vocab:
        raise UsageError(f"{model} and its teacher {teacher} have different vocabularies")
    oracle_model = load_model(oracle, device=device) if oracle else None
    if oracle_model is not None and oracle_model.get_output_embeddings().weight.shape[0] != vocab:
        raise invalid("oracle", f"{oracle}: {oracle_model.get_output_embeddings().weight.shape[0]} output tokens, "
                                f"the teacher {vocab}; the oracle must share the teacher's vocabulary")
    for m in (student, ref, oracle_model):
        if m is not None:
            m.requires_grad_(False)
    return student.train(), ref, oracle_model


def trainable(student, ref, which: str) -> list:
    """(name, parameter) pairs that train, by the student's own parameter names, marked requires_grad; a one-line
    error when there are none. `replaced`: what the plan swapped in where a layer differs from the teacher's own
    (`ref`'s): its mixer where that differs, its narrower MLP where it has one; `mixers`: every layer's token mixer;
    `all`: every parameter."""
    from ..hf import surgery
    from ..operators import Candidate

    if which == "all":
        chosen = {id(p) for p in student.parameters()}
    else:
        ops = [Candidate.of(layer["op"], layer.get("params"),
                            Candidate.of(layer["mlp"]["op"], layer["mlp"].get("params")) if layer.get("mlp") else None)
               for layer in student.config.mosaic["layers"]]
        own = surgery.teacher_ops(ref.config)
        chosen = set()
        for i, layer in enumerate(surgery.decoder_layers(student)):
            if which == "replaced" and ops[i] == own[i]:
                continue
            mixer = getattr(layer, "self_attn", None)
            # replaced: only what the plan swapped in (a layer that narrowed its MLP alone keeps the teacher's mixer)
            if mixer is not None and (which != "replaced" or ops[i].mixer != own[i]):
                chosen.update(id(p) for p in mixer.parameters())
            if which == "replaced" and ops[i].mlp:
                chosen.update(id(p) for p in layer.mlp.parameters())
    named = sorted((n, p) for n, p in student.named_parameters() if id(p) in chosen)
    if not named:
        raise invalid("trainable", f"{which}: nothing to train (the plan's replaced layers have no parameters: none "
                                   "or drop); use mixers or all")
    for _, p in named:
        p.requires_grad_(True)
    return named
