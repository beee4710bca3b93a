"""`finetune --task qa`: extractive question answering on SQuAD-format JSON with
ElectraForQuestionAnswering (the SQuAD logic itself is in squad.py).

    python -m electra_ray.finetune --task qa --model EXPORT --train train.json --eval dev.json \\
        --max-seq-len 384 --doc-stride 128 --epochs 2

Every window of a context is a training row (its answer's first and last token, or [CLS] when the
window does not hold it); evaluation picks each question's best span over its windows and reports
the official SQuAD EM and F1 (percentages).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from transformers import ElectraForQuestionAnswering

from electra_ray.finetune_checks import QA_MAX_SEQ_LEN, TASK_METRICS, qa_query_len, qa_stride, qa_window
from electra_ray.finetune_config import FinetuneConfig, FinetuneError
from electra_ray.finetune_kinds import TaskKind, new_head_model
from electra_ray.squad import best_answers, features, read_squad, squad_metrics


class QuestionAnswering(TaskKind):
    name = "qa"
    metrics = TASK_METRICS["qa"]
    default_metric = "f1"
    model_class = ElectraForQuestionAnswering

    default_max_seq_len = QA_MAX_SEQ_LEN

    def fit_window(self, cfg: FinetuneConfig, max_len: int) -> FinetuneConfig:
        """The window capped by the model's positions may be shorter than asked: the question's
        tokens and the stride, unless given, become what fits (finetune_checks.qa_window)."""
        ok, message = qa_window(cfg, max_len, "the model's window")
        if not ok:
            raise FinetuneError(message)
        return dataclasses.replace(
            cfg, max_seq_len=max_len, max_query_len=qa_query_len(cfg, max_len), doc_stride=qa_stride(cfg, max_len)
        )

    def load(self, cfg, tokenizer, max_len):
        questions = read_squad(cfg.train)
        if cfg.max_train_examples:
            questions = questions[: cfg.max_train_examples]
        shape = dict(max_len=max_len, doc_stride=cfg.doc_stride, max_query_len=cfg.max_query_len)
        evaluation = features(tokenizer, read_squad(cfg.eval), **shape)
        # Trained on questions without an answer (SQuAD v2.0): the answer search may answer "" too.
        evaluation = dataclasses.replace(evaluation, allow_no_answer=any(q.impossible for q in questions))
        return features(tokenizer, questions, **shape), evaluation, None

    def model(self, model_dir, cfg, labels):
        return new_head_model(ElectraForQuestionAnswering, model_dir, cfg, ("qa_outputs.",))

    def batch(self, data, index, device):
        width = int(data.lengths[index].max())
        tensors = {
            "input_ids": data.input_ids[index, :width],
            "token_type_ids": data.token_type_ids[index, :width],
            "attention_mask": (np.arange(width)[None, :] < data.lengths[index, None]).astype(np.int64),
            "start_positions": data.start_positions[index],
            "end_positions": data.end_positions[index],
        }
        return {name: torch.from_numpy(value).to(device) for name, value in tensors.items()}

    def size(self, data):
        return len(data.lengths)

    @torch.no_grad()
    def evaluate(self, model, data, labels, cfg, batch_size: int = 64):
        model.eval()
        device = next(model.parameters()).device
        rows, width = data.input_ids.shape
        starts, ends = np.full((rows, width), -np.inf, np.float32), np.full((rows, width), -np.inf, np.float32)
        for first in range(0, rows, batch_size):
            index = np.arange(first, min(first + batch_size, rows))
            inputs = self.batch(data, index, device)
            del inputs["start_positions"], inputs["end_positions"]
            out = model(**inputs)
            cut = inputs["input_ids"].shape[1]
            starts[index, :cut], ends[index, :cut] = out.start_logits.float().cpu(), out.end_logits.float().cpu()
        answers = best_answers(data, starts, ends, cfg.n_best, cfg.max_answer_len, data.allow_no_answer)
        return squad_metrics(data.questions, answers)

    def describe(self, train, data):
        """train_examples / eval_examples count windows (the training rows); these, questions."""
        return {"train_questions": len(train.questions), "eval_questions": len(data.questions)}


QA = QuestionAnswering()
