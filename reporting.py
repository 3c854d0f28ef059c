"""What is reported per training iteration: the log line, TensorBoard, the detailed logs, the
collapse warning, and the check that stops training on a non-finite loss."""
import argparse
import math
import time
from datetime import timedelta
from pathlib import Path

import numpy as np

import common

LN2 = math.log(2.0)
COLLAPSE_ITERATIONS = 100  # iterations at ln 2 before the collapse warning
HISTOGRAM_EVERY = 10  # iterations between TensorBoard histograms (scalars: every iteration)
# The train step's per-sample parts beside the triplet loss (replicas.extra_terms): their name
# in the log line, TensorBoard (loss/<key>) and the detailed logs (detailed_<key>_loss.npy).
PARTS = {'id': ('id_losses', 'ID loss'), 'center': ('center_losses', 'center loss')}


class Reporter:
    """Everything reported per iteration: the log line, TensorBoard, detailed logs, collapse."""

    def __init__(self, root: Path | None, args: argparse.Namespace, fids: np.ndarray, start: int,
                 log):
        """root: where TensorBoard and the detailed logs go; None: only the log line."""
        import tensorflow as tf
        self.args, self.log = args, log
        self.batch = args.batch_p * args.batch_k
        self.writer = (tf.summary.create_file_writer(str(root)) if root
                       else tf.summary.create_noop_writer())
        self.detailed = None
        if args.detailed_logs and root:
            fid_bytes = max(len(fid.encode()) for fid in fids)
            self.detailed = open_detailed_logs(root, args.train_iterations, self.batch,
                                               args.embedding_dim, fid_bytes, fresh=start == 0,
                                               parts=parts_of(args))
            self.fids_bytes = np.array([fid.encode() for fid in fids])
        self.durations = []
        self.collapse_streak = 0
        self.last = time.time()

    def __call__(self, iteration: int, out: dict, lr: float, rows) -> None:
        """Reports 0-based `iteration`: the train step's outputs `out`, its batch's `rows`."""
        import tensorflow as tf
        args, losses = self.args, out['losses'].numpy()
        now = time.time()
        self.durations.append(now - self.last)
        self.last = now
        recent = self.durations[1:][-50:] or self.durations  # the first includes tracing
        seconds = float(np.mean(recent))
        top1, prec = float(out['top1'].numpy().mean()), float(out['prec_at_k'].numpy().mean())
        active = int(out['active'].numpy())
        parts = {key: out[PARTS[key][0]].numpy() for key in PARTS if PARTS[key][0] in out}
        extra = ''.join(f', {PARTS[key][1]} mean {values.mean():.3f}'
                        for key, values in parts.items())
        if 'weight_decay' in out:
            extra += f', weight decay {float(out["weight_decay"]):.3f}'
        self.log.info('iter %d/%d: loss min %.3f mean %.3f max %.3f%s, top-1 %.1f%%, prec@%d '
                      '%.1f%%, active %d/%d, lr %.3g, %.3f s/it, ETA %s', iteration + 1,
                      args.train_iterations, losses.min(), losses.mean(), losses.max(), extra,
                      100 * top1, args.batch_k - 1, 100 * prec, active, self.batch, lr, seconds,
                      timedelta(seconds=round(seconds * (args.train_iterations - iteration - 1))))

        with self.writer.as_default(step=iteration + 1):
            for name, value in {'loss': losses.mean(), 'batch/top1': top1,
                                f'batch/prec_at_{args.batch_k - 1}': prec,
                                'batch/active_count': active,
                                'batch/active_fraction': out['active_fraction'].numpy(),
                                'learning_rate': lr,
                                'seconds_per_iteration': self.durations[-1]}.items():
                tf.summary.scalar(name, value)
            if parts or 'weight_decay' in out:  # the parts beside the triplet loss ('loss')
                for key, values in parts.items():
                    tf.summary.scalar(f'loss/{key}', values.mean())
                if 'weight_decay' in out:
                    tf.summary.scalar('loss/weight_decay', out['weight_decay'])
                tf.summary.scalar('loss/total', out['loss'])
            if iteration % HISTOGRAM_EVERY == 0:
                norms = np.linalg.norm(out['emb'].numpy().astype(np.float64), axis=1)
                for name, values in {'losses': losses, 'dists/positive': out['pos_dists'],
                                     'dists/negative': out['neg_dists'],
                                     'emb_norm': norms}.items():
                    tf.summary.histogram(name, values)
        if self.detailed is not None:
            self.detailed['emb'][iteration] = out['emb'].numpy()
            self.detailed['loss'][iteration] = losses
            for key, values in parts.items():
                self.detailed[f'{key}_loss'][iteration] = values
            self.detailed['fids'][iteration] = self.fids_bytes[rows.numpy()]

        self.collapse_streak = self.collapse_streak + 1 if collapsed(losses, args.margin) else 0
        if self.collapse_streak == COLLAPSE_ITERATIONS:
            self.log.warning(
                'the soft-margin loss has been stuck at ln 2 = 0.693 for %d iterations: the '
                'embeddings have collapsed (all distances near zero) and will hardly recover. '
                'What usually helps: start from pretrained weights (--initial_checkpoint), a '
                'lower --learning_rate, other --batch_p / --batch_k, and checking that the '
                'images of an identity are one person.', COLLAPSE_ITERATIONS)

    def flush(self) -> None:
        """Writes what is buffered to disk, before a checkpoint is saved and at the end."""
        self.writer.flush()
        if self.detailed is not None:
            for array in self.detailed.values():
                array.flush()


def finite(out: dict, iteration: int, batch_fids: np.ndarray, root: Path | None, latest: str,
           log) -> bool:
    """True if a train step's losses, distances and gradients are finite; else writes the
    batch's file names to `nonfinite_batch_<iteration>.txt` in `root` (unless None) and logs
    one line why training stops.

    Distances overflow before the loss does (inf - inf makes the loss NaN only later).
    """
    losses = out['losses'].numpy()
    culprits = [name for name, ok in (
        ('the loss', np.all(np.isfinite(losses))),
        *((f'the {label}', np.all(np.isfinite(out[key].numpy())))
          for key, label in PARTS.values() if key in out),
        ('the embedding distances', np.all(np.isfinite(out['dists'].numpy()))),
        ('the gradients', bool(out['grads_finite'].numpy()))) if not ok]
    if not culprits:
        return True
    batch_file = root / f'nonfinite_batch_{iteration + 1}.txt' if root else 'the chief\'s root'
    if root:
        with common.atomic_write(batch_file) as tmp:
            tmp.write_text(''.join(f'{fid}\n' for fid in batch_fids), encoding='utf-8')
    log.error('%s not finite at iteration %d (loss mean %s); stopping without saving, the '
              'latest checkpoint is %s; the batch is listed in %s. Try a lower --learning_rate.',
              ' and '.join(culprits), iteration + 1, losses.mean(), latest, batch_file)
    return False


def parts_of(args: argparse.Namespace) -> tuple[str, ...]:
    """The keys of PARTS that train.py's flags switch on."""
    return tuple(key for key, on in (('id', getattr(args, 'id_loss_weight', 0)),
                                     ('center', getattr(args, 'center_loss_weight', 0))) if on)


def open_detailed_logs(root: Path, iterations: int, batch: int, dim: int, fid_bytes: int,
                       fresh: bool, parts: tuple[str, ...] = ()) -> dict:
    """Memory-mapped per-iteration records: row i holds iteration i's batch.

    detailed_emb.npy (T, B, D) float32 (what the triplet loss sees), detailed_loss.npy (T, B)
    float32 (the triplet loss), detailed_fids.npy (T, B) bytes, and for each of `parts`
    (PARTS keys) detailed_<part>_loss.npy (T, B) float32. They are sparse files: rows not yet
    trained read as 0.
    """
    specs = {'emb': ((iterations, batch, dim), np.float32),
             'loss': ((iterations, batch), np.float32),
             'fids': ((iterations, batch), f'S{fid_bytes}'),
             **{f'{part}_loss': ((iterations, batch), np.float32) for part in parts}}
    logs = {}
    for name, (shape, dtype) in specs.items():
        path = root / f'detailed_{name}.npy'
        if fresh or not path.exists():
            logs[name] = np.lib.format.open_memmap(path, 'w+', dtype, shape)
        else:
            logs[name] = np.load(path, mmap_mode='r+', allow_pickle=False)
    return logs


def collapsed(losses: np.ndarray, margin) -> bool:
    """True if a soft-margin batch looks collapsed: every anchor's loss at ln 2 (d_pos = d_neg)."""
    return margin == 'soft' and bool(np.all(np.abs(losses - LN2) < 0.01))
