"""Train RecBole 1.2.1's SASRec under a wall-clock budget and export its test scores (runs in RecBole's venv).

    /work/recbole-venv/bin/python tools/experiments/recbole_runner.py --data-dir DIR --budget-s 900 --out OUT

This file runs INSIDE the RecBole virtual environment (RecBole 1.2.1 pins ray<=2.6.3, numpy<2 and pandas<3,
which the main venv cannot hold), so it imports only recbole, torch, numpy and the standard library; the
nanoforge experiment ``tools/experiments/recommender.py`` writes its input and reads its output.

Input: ``DIR/<name>/<name>.inter``, RecBole's atomic format (``user_id:token item_id:token
timestamp:float``), written by recommender.py with the timestamp replaced by each event's POSITION in the
user's sequence, so RecBole's ordering (and thus its leave-one-out split) is exactly ours, ties included.
The dataset must not be named ``ml-100k``: RecBole would silently use its bundled copy instead.

What it does: RecBole's own data pipeline with the leave-one-out split (``LS: valid_and_test``, time order,
full ranking), SASRec with RecBole's default hyper-parameters and the CE loss, trained with the body of
RecBole's ``Trainer._train_epoch`` (its optimizer, ``model.calculate_loss``, its data loader) unrolled so the
budget is checked after every batch: training stops at the first batch that reaches it. Training time
counts the data loader's batch building too. Every ``--eval-every-s`` training seconds and at every epoch
end, RecBole's evaluator computes validation metrics, logged against training seconds and the process's
CPU seconds spent training (evaluation time is not counted). The best-validation
state is kept IN MEMORY (RecBole's own checkpoint reload calls ``torch.load`` without ``weights_only`` and
fails under torch 2.13; this runner never writes or reads a pickle).
Output ``OUT/``: ``recbole_curve.jsonl`` (one line per epoch, written as it goes), ``recbole_result.json``
(timings, RecBole's own test metrics of the last and of the best-validation model) and, for the last and
the best-validation model, ``scores_{last,best}.npy`` (float32, one row per test user, one column per
RecBole item id; column 0 is padding) with ``tokens.json`` (the user token of each row, the item token of
each column), so nanoforge's metric code can rank them exactly like its own models.
What it does not do: tune RecBole, use a GPU, or touch the network.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

#: SASRec settings: RecBole's defaults for the model (properties/model/SASRec.yaml) and training, written
#: out so the page shows what ran; only the split / metrics / device keys differ from RecBole's defaults.
SASREC_CONFIG: dict = {
    "n_layers": 2,
    "n_heads": 2,
    "hidden_size": 64,
    "inner_size": 256,
    "hidden_dropout_prob": 0.5,
    "attn_dropout_prob": 0.5,
    "hidden_act": "gelu",
    "loss_type": "CE",
    "MAX_ITEM_LIST_LENGTH": 50,
    "train_batch_size": 2048,
    "learning_rate": 0.001,
    "train_neg_sample_args": None,  # CE over all items needs no negatives
    "eval_batch_size": 4096,
}


def recbole_config(data_dir: Path, dataset: str, work: Path, seed: int) -> dict:
    """The config dict handed to ``recbole.config.Config``."""
    return {
        **SASREC_CONFIG,
        "data_path": str(data_dir),
        "dataset": dataset,
        "checkpoint_dir": str(work / "saved"),
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
        "metrics": ["Hit", "NDCG", "MRR"],
        "topk": [10],
        "valid_metric": "NDCG@10",
        "use_gpu": False,
        "seed": seed,
        "reproducibility": True,
        "show_progress": False,
        "log_wandb": False,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True, help="folder holding <dataset>/<dataset>.inter")
    ap.add_argument("--dataset", default="ml100k-loo", help="dataset name (never 'ml-100k')")
    ap.add_argument("--budget-s", type=float, required=True, help="training seconds (evaluation excluded)")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--eval-every-s", type=float, default=60.0, help="training seconds between validations")
    ap.add_argument("--seed", type=int, default=2020)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.dataset == "ml-100k":
        raise SystemExit("error: --dataset 'ml-100k' makes RecBole use its bundled copy; choose another name")
    inter = Path(args.data_dir) / args.dataset / f"{args.dataset}.inter"
    if not inter.is_file():
        raise SystemExit(f"error: {inter} not found; write the atomic .inter file first")
    if args.budget_s <= 0:
        raise SystemExit(f"error: --budget-s={args.budget_s} must be > 0 (seconds)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(out)  # RecBole's Trainer writes log_tensorboard/ into the working directory
    torch.set_num_threads(args.threads)

    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    logging.basicConfig(level=logging.WARNING)
    t_start = time.perf_counter()
    config = Config(
        model="SASRec",
        dataset=args.dataset,
        config_dict=recbole_config(Path(args.data_dir), args.dataset, out, args.seed),
    )
    init_seed(config["seed"], config["reproducibility"])
    torch.set_num_threads(args.threads)  # init_seed may not, but keep it explicit after RecBole's setup
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = SASRec(config, train_data._dataset).to(config["device"])
    trainer = Trainer(config, model)
    setup_s = time.perf_counter() - t_start
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"recbole: {dataset.user_num - 1} users, {dataset.item_num - 1} items, {len(train_data._dataset)} training "
        f"sequences, {n_params:,} parameters, setup {setup_s:.1f}s",
        flush=True,
    )

    curve_path = out / "recbole_curve.jsonl"
    curve_path.write_text("")
    state = {
        "elapsed": 0.0,
        "cpu": 0.0,
        "batches": 0,
        "best": (-1.0, -1),
        "best_state": None,
        "next_eval": 0.0,
    }

    def validate(epoch: int, epoch_seconds: float | None) -> None:
        t1 = time.perf_counter()
        score, res = trainer._valid_epoch(valid_data, show_progress=False)
        point = {
            "epoch": epoch,
            "batches": state["batches"],
            "train_seconds": state["elapsed"],
            "train_cpu_seconds": state["cpu"],
            "epoch_seconds": epoch_seconds,
            "valid_ndcg10": float(res["ndcg@10"]),
            "valid_hit10": float(res["hit@10"]),
            "valid_eval_seconds": time.perf_counter() - t1,
        }
        with open(curve_path, "a") as f:
            f.write(json.dumps(point) + "\n")
        print("recbole", json.dumps(point), flush=True)
        if score > state["best"][0]:
            state["best"] = (score, state["batches"])
            state["best_state"] = copy.deepcopy(trainer.model.state_dict())
        state["next_eval"] = state["elapsed"] + args.eval_every_s

    # The body of RecBole's Trainer._train_epoch (single process, no AMP, no grad clipping: RecBole's defaults),
    # unrolled so the budget is checked after every batch and validation runs every --eval-every-s.
    epoch, epoch_seconds, out_of_time = 0, [], False
    while not out_of_time:
        trainer.model.train()
        t_epoch = state["elapsed"]
        t0, c0 = time.perf_counter(), time.process_time()
        batches = iter(train_data)  # shuffles; its time and each batch's collation count as training time
        state["elapsed"] += time.perf_counter() - t0
        state["cpu"] += time.process_time() - c0
        while True:
            t0, c0 = time.perf_counter(), time.process_time()
            interaction = next(batches, None)
            if interaction is None:
                break
            interaction = interaction.to(trainer.device)
            trainer.optimizer.zero_grad()
            loss = trainer.model.calculate_loss(interaction)
            loss.backward()
            trainer.optimizer.step()
            state["elapsed"] += time.perf_counter() - t0
            state["cpu"] += time.process_time() - c0
            state["batches"] += 1
            out_of_time = state["elapsed"] >= args.budget_s
            if out_of_time:
                break
            if state["elapsed"] >= state["next_eval"]:
                validate(epoch, None)
                trainer.model.train()
        if not out_of_time:
            epoch_seconds.append(state["elapsed"] - t_epoch)
        validate(epoch, epoch_seconds[-1] if not out_of_time else None)
        epoch += 1
    best = state["best"]
    best_state = state["best_state"]
    elapsed = state["elapsed"]

    result: dict = {
        "recbole_version": __import__("recbole").__version__,
        "torch": torch.__version__,
        "config": SASREC_CONFIG,
        "seed": args.seed,
        "epochs_started": epoch,
        "batches": state["batches"],
        "batches_per_epoch": len(train_data),
        "train_seconds": elapsed,
        "train_cpu_seconds": state["cpu"],
        "budget_s": args.budget_s,
        "epoch_seconds": epoch_seconds,
        "setup_seconds": setup_s,
        "parameters": n_params,
        "n_train_sequences": len(train_data._dataset),
        "best_valid_batch": best[1],
    }
    rows_users: list[str] | None = None
    for tag, state in (("last", None), ("best", best_state)):
        if state is not None:
            trainer.model.load_state_dict(state)
        test = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
        result[f"recbole_test_{tag}"] = {k: float(v) for k, v in test.items()}
        scores, users = export_scores(trainer, test_data, dataset)
        np.save(out / f"scores_{tag}.npy", scores.astype(np.float32), allow_pickle=False)
        rows_users = users
    items = [str(t) for t in dataset.field2id_token["item_id"]]
    (out / "tokens.json").write_text(json.dumps({"users": rows_users, "items": items}))
    result["total_seconds"] = time.perf_counter() - t_start
    (out / "recbole_result.json").write_text(json.dumps(result, indent=1))
    print(
        "recbole done", json.dumps({k: result[k] for k in ("batches", "train_seconds", "recbole_test_last")})
    )
    return 0


@torch.no_grad()
def export_scores(trainer, test_data, dataset) -> tuple[np.ndarray, list[str]]:  # type: ignore[no-untyped-def]
    """(n_test_users, n_items) full-ranking scores exactly as RecBole's evaluator sees them, and row users."""
    trainer.model.eval()
    rows, users = [], []
    for batched in test_data:
        interaction, scores, _, _ = trainer._full_sort_batch_eval(batched)  # column 0 (padding) is -inf
        rows.append(scores.float().cpu().numpy())
        uid = interaction["user_id"].cpu().numpy()
        users.extend(str(t) for t in dataset.id2token("user_id", uid))
    return np.concatenate(rows), users


if __name__ == "__main__":
    sys.exit(main())
