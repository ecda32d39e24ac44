"""Mutation check: does the test suite catch planted mistakes?

    python -m tests.mutations [--only NAME ...] [--baseline] [--list]

Copies the package and its tests to a temporary folder (the working tree is
never touched), plants one mistake at a time there as an exact string
replacement in one file, runs the tests that should catch it (stopping at the
first failure) with the copy first on sys.path, and reports for each mistake
whether a test failed, and which. Exits 1 when a mistake survived (its tests
passed), 2 when a target string is missing: a mutation whose code moved must
be updated, not silently skipped. The check runs after the suite passed (CI:
.ci/run after `make test`); --baseline first runs every selected test on the
unmutated copy, to show they pass there.

Python and Triton mistakes take effect in the copy as they are planted; for a
mistake in csrc/ the copy's extension is rebuilt first (tests/mutated_ext.py:
only the translation units that include the mutated file are compiled again:
under a minute for one, about three for a header every pass includes), then
restored. See docs/kernels.md, "How exactness is
tested".
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests import mutated_ext

ROOT = Path(__file__).resolve().parent.parent
COPIED = ["fgdkern", "csrc", "tests", "bench", "pyproject.toml"]
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".benchmarks", "results")

LOSS = "tests/losses/test_fgd.py"
ZEROS = ["tests/losses/test_fgd_zeros.py", "tests/ops/test_fgd_passes_zeros.py"]
TRITON_PASSES = ["tests/triton/test_fgd_grad.py", "tests/triton/test_fgd_stats.py"]
CWD, PKD, MGD = (f"tests/losses/test_{loss}.py" for loss in ("cwd", "pkd", "mgd"))
FGD_TERMS = "tests/triton/test_fgd_terms.py"
FKD_TERMS = "tests/triton/test_fkd_terms.py"
FKD_PAPER = "tests/triton/test_fkd_paper.py"
FKD_SMALL_MATH = "tests/reference/test_fkd_small_math.py"


@dataclass
class Mutation:
    name: str
    path: str       # file, relative to the repository root
    old: str        # exact text, found exactly once
    new: str
    tests: list     # pytest arguments: files that exist in the copy, then options


MUTATIONS = [
    Mutation("triton-sign0-is-plus-one", "fgdkern/triton/tiles.py",
             "return (x > 0).to(tl.float32) - (x < 0)", "return (x >= 0).to(tl.float32) - (x < 0)",
             ZEROS + ["tests/triton/test_fgd_grad.py", "-k", "triton or zero"]),
    Mutation("k_const-term-dropped", "fgdkern/reference/fgd_small_math.py",
             'k_const=g["sum_d"] - 2 * g["m2_d"] * (c["sum_d"] / HW),', 'k_const=g["sum_d"],',
             [LOSS, "-k", "fused_matches_reference and torch"]),
    Mutation("gamma-lambda-swapped", "fgdkern/losses/fgd.py",
             "return [self.alpha_fgd, self.beta_fgd, self.gamma_fgd, self.lambda_fgd]",
             "return [self.alpha_fgd, self.beta_fgd, self.lambda_fgd, self.gamma_fgd]",
             ["tests/losses/test_fgd_shared.py", "tests/reference", "tests/test_baselines.py",
              "-k", "not triton"]),
    Mutation("triton-ctx-rescale-dropped", "fgdkern/triton/fgd_stats.py",
             "scales = tl.where(rows == CTX_S, alpha_s,",
             "scales = tl.where(rows == CTX_S, 1.0,",
             ["tests/triton/test_levels.py", "tests/triton/test_fgd_stats.py",
              "-k", "runs_of_blocks or temperature"]),
    Mutation("autocast-not-disabled", "fgdkern/ops/fgd.py",
             "with torch.autocast(device.type, enabled=False):",
             "with torch.autograd.set_grad_enabled(torch.is_grad_enabled()):",
             ["tests/losses", "-k", "autocast and not triton"]),
    Mutation("dS-D-term-sign", "fgdkern/triton/fgd_grad.py",
             "+ (s - t) * (k_d + k_fg * fgA", "- (s - t) * (k_d + k_fg * fgA",
             ["tests/triton/test_fgd_grad.py"]),
    Mutation("fused-fg-bg-swapped", "fgdkern/ops/fgd.py",
             "return fgd_table(impl, S, T, fg, bg, gc_s, gc_t, temps, check)",
             "return fgd_table(impl, S, T, bg, fg, gc_s, gc_t, temps, check)",
             [LOSS, "-k", "fused_matches_reference and torch"]),
    # In the masks every backend gets, the reference too: only tests against an
    # independent definition (hand-computed cases, the eager port) can see it.
    Mutation("masks-fg-bg-swapped", "fgdkern/ops/fgd.py",
             "fg = [f.to(device) for f, _ in masks]", "fg = [f.to(device) for _, f in masks]",
             ["tests/reference", "tests/losses/test_fgd_checkpoint.py", "-k", "not triton"]),
    Mutation("bg-loss-per-image-mean-dropped", "fgdkern/reference/fgd_small_math.py",
             '(A_C_t * c["x_fg"]).sum(), (A_C_t * c["x_bg"]).sum(),',
             '(A_C_t * c["x_fg"]).sum(), N * (A_C_t * c["x_bg"]).sum(),',
             [LOSS, "-k", "fused_matches_reference and torch"]),
    Mutation("level-temperature-ignored", "fgdkern/ops/fgd.py",
             "_FGD.apply(impl, [float(t) for t in temps], eps, check, L,",
             "_FGD.apply(impl, [float(temps[0]) for t in temps], eps, check, L,",
             [LOSS, "-k", "temperature and torch"]),
    Mutation("pfi-fused-p-dif-square-rooted", "fgdkern/reference/imitation_passes.py",
             "v = f[:, IMIT_PIX.sq_d] * p[:, IMIT_PIX.sq_d] / ck",
             "v = f[:, IMIT_PIX.sq_d] * p[:, IMIT_PIX.sq_d].sqrt() / ck",
             ["tests/losses/test_pfi.py", "-k", "fused_matches_reference and torch"]),
    Mutation("pfi-coef-factor-two-dropped", "fgdkern/reference/imitation_passes.py",
             "a = 4 * g.to(f.dtype)", "a = 2 * g.to(f.dtype)",
             ["tests/losses/test_pfi.py", "-k", "fused_matches_reference and torch"]),
    Mutation("triton-pfi-coef-sq-p-dropped", "fgdkern/triton/pfi_math.py",
             "a = 4 * g * p1 * v * sq_p * p0", "a = 4 * g * p1 * v * p0",
             ["tests/triton/test_level_math.py"]),
    Mutation("imitation-sq-d-factor-two-dropped", "fgdkern/reference/imitation_passes.py",
             'a = 2 * gp["sq_d"]', 'a = gp["sq_d"]',
             ["tests/losses/test_fkd.py", "-k", "fused_matches_reference and torch"]),
    Mutation("imitation-dY-pass-with-X-Y-unswapped", "fgdkern/ops/imitation.py",
             "dY = run(Y, X, [c[2] for c in coefs]", "dY = run(X, Y, [c[2] for c in coefs]",
             ["tests/losses/test_fkd.py", "-k", "matches_reference and torch"]),
    Mutation("triton-imitation-sign-term-dropped", "fgdkern/triton/imitation_grad.py",
             "+ b_p + b_c + sign(x) * (s_p + s_c)", "+ b_p + b_c + (s_p + s_c)",
             ["tests/triton/test_imitation_grad.py"]),
    Mutation("triton-sweep-chan-spread-dropped", "fgdkern/triton/merges.py",
             "acc * scale + x + tl.where(row == M2, spread[:, None], 0.0)", "acc * scale + x",
             ["tests/triton/test_levels.py", "-k", "runs_of_blocks"]),
    Mutation("triton-sweep-running-softmax-sum-not-rescaled", "fgdkern/triton/fgd_stats.py",
             "tl.store(scalars + M + 1, l * alpha + block_sum(e))",
             "tl.store(scalars + M + 1, l + block_sum(e))",
             ["tests/triton/test_levels.py", "-k", "runs_of_blocks"]),
    Mutation("triton-sweep-second-pixel-sum-dropped", "fgdkern/triton/sweeps.py",
             "    if K > 1:\n        a1 += x1", "    if K > 2:\n        a1 += x1",
             ["tests/triton/test_fgd_grad.py"]),
    Mutation("triton-sweep-post-sum-of-another-row", "fgdkern/triton/sweeps.py",
             "sum_channels(v2, BLOCK_C, BLOCK_HW, SECTOR))",
             "sum_channels(v1, BLOCK_C, BLOCK_HW, SECTOR))",
             ["tests/triton/test_imitation_stats.py"]),
    Mutation("triton-fold-softmax-merge-unscaled", "fgdkern/triton/merges.py",
             "    return m, l_a * alpha + l_b * beta\n", "    return m, l_a + l_b * beta\n",
             ["tests/triton/test_cwd_passes.py", "-k", "launch or far_from_zero"]),
    Mutation("cpp-fgd-terms-rela-hw-dropped", "csrc/cpu/fgd_terms.cpp",
             "rela += ch[kM2D * C + c] + hw * (u[c] * u[c]);",
             "rela += ch[kM2D * C + c] + (u[c] * u[c]);",
             ["tests/cpu/test_fgd_terms_cpp.py", "-k", "pytorch_small_math"]),
    Mutation("cpp-gc-mlp-layernorm-hn-term-dropped", "csrc/cpu/gc_mlp.h",
             "gh[j] = a.rstd[n] * (gh[j] - mg - hn[j] * mgh);", "gh[j] = a.rstd[n] * (gh[j] - mg);",
             ["tests/cpu/test_fgd_terms_cpp.py", "-k", "pytorch_small_math"]),
    Mutation("cpp-fgd-stats-ctx-rescale-dropped", "csrc/cpu/fgd_stats.cpp",
             "{1.0, 1.0, f_s[b], f_t[b], 1.0, 0.0, f_a[b], f_a[b]}",
             "{1.0, 1.0, 1.0, f_t[b], 1.0, 0.0, f_a[b], f_a[b]}",
             ["tests/cpu/test_fgd_stats_cpp.py"]),
    Mutation("cpp-chan-merge-spread-dropped", "csrc/cpu/partials.h",
             "m2 += m2_block + delta * delta * (count * n / total);", "m2 += m2_block;",
             ["tests/cpu/test_fgd_cpp.py", "-k", "retinanet or large_mean"]),
    Mutation("triton-stacked-rows-in-join-order", "fgdkern/triton/merges.py",
             "tl.join(tl.join(tl.join(a, e), tl.join(c, g)), tl.join(tl.join(b, f), "
             "tl.join(d, h)))",
             "tl.join(tl.join(tl.join(a, b), tl.join(c, d)), tl.join(tl.join(e, f), "
             "tl.join(g, h)))",
             ["tests/triton/test_fgd_stats.py"]),
    Mutation("triton-aligned-level-extent-unchecked", "fgdkern/triton/tiles.py",
             "ok = ok and multiple(C, sc) and (H * W) % align == 0", "ok = ok and multiple(C, sc)",
             ["tests/triton/test_alignment.py", "-k", "mixed or runs"]),
    Mutation("rm-softmax-over-all-anchors", "fgdkern/reference/rm.py",
             "        segment, M = dense_ids(instance_ids)\n",
             "        segment, M = dense_ids(instance_ids)\n"
             "        segment = torch.zeros_like(segment)\n",
             ["tests/reference/test_rm.py", "tests/losses/test_rm.py"]),
    Mutation("rm-M-counts-empty-instances", "fgdkern/reference/rm.py",
             "return segment, starts.sum()", "return segment, (sorted_ids[-1:] + 1).sum()",
             ["tests/reference/test_rm.py", "tests/losses/test_rm.py"]),
    Mutation("fkd-code-mask-not-averaged", "fgdkern/reference/fkd_small_math.py",
             "M = ((A_t + A_s) / 2).detach()", "M = (A_t + A_s).detach()",
             [FKD_SMALL_MATH, "tests/losses/test_fkd.py", "-k",
              "match and (not fused_matches_reference or (torch and code))"]),
    Mutation("fkd-signed-mean-taken-absolute", "fgdkern/reference/fkd_small_math.py",
             "chan_s[:, IMIT_CHAN.sum_x] / HW,", "chan_s[:, IMIT_CHAN.abs_x] / HW,",
             [FKD_SMALL_MATH, "tests/losses/test_fkd.py", "-k",
              "match and (not fused_matches_reference or (torch and code))"]),
    Mutation("fkd-paper-channel-mask-from-the-student-alone", "fgdkern/reference/fkd_small_math.py",
             "+ chan[L + l][:, IMIT_CHAN.abs_x] / pix[l].shape[2]), temps[l]).detach()",
             "), temps[l]).detach()",
             [FKD_SMALL_MATH, "tests/losses/test_fkd.py", "-k",
              "paper and (not fused_matches_reference or torch)"]),
    Mutation("triton-fkd-paper-spatial-sign-term-unscaled", "fgdkern/triton/fkd_paper.py",
             "tl.store(pixc + S * HW + p, k_s * d / C, mask=pn)",
             "tl.store(pixc + S * HW + p, k_s * d, mask=pn)", [FKD_PAPER, "-k", "matches"]),
    Mutation("triton-fkd-paper-masks-not-scaled-by-their-count", "fgdkern/triton/fkd_paper.py",
             "return tl.where(mask, n * tl.exp(", "return tl.where(mask, tl.exp(",
             [FKD_PAPER, "-k", "matches"]),
    Mutation("triton-fkd-terms-spatial-padding-wraps-rows", "fgdkern/triton/fkd_terms.py",
             "inside = ok & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)",
             "inside = ok & (yy >= 0) & (yy < H)", [FKD_TERMS, "-k", "matches"]),
    Mutation("triton-fkd-terms-grad-transposed-conv-unflipped", "fgdkern/triton/fkd_terms_grad.py",
             "yy, xx = y - (k // 3 - 1), x - (k % 3 - 1)",
             "yy, xx = y + (k // 3 - 1), x + (k % 3 - 1)", [FKD_TERMS, "-k", "matches"]),
    Mutation("triton-fkd-terms-grad-channel-coef-unscaled", "fgdkern/triton/fkd_terms_grad.py",
             "tl.store(chanc + CB * Cs + i, g_mean / HW, mask=i < Cs)",
             "tl.store(chanc + CB * Cs + i, g_mean, mask=i < Cs)", [FKD_TERMS, "-k", "matches"]),
    Mutation("triton-fkd-terms-grad-images-not-added", "fgdkern/triton/fkd_terms_grad.py",
             "g_w += g_w_n", "g_w = g_w_n", [FKD_TERMS, "-k", "matches"]),
    Mutation("cwd-k-inv-tau-dropped", "fgdkern/reference/channel_passes.py",
             "/ (it * ch.shape[0] * ch.shape[2])).expand", "/ (it * it * ch.shape[0] * ch.shape[2])).expand",
             [CWD, "-k", "fused_matches_reference and torch"]),
    Mutation("cwd-fused-tau-squared-dropped", "fgdkern/reference/channel_passes.py",
             "sum() / (it * it * ch.shape[0]", "sum() / (ch.shape[0]",
             [CWD, "-k", "fused_matches_reference and torch"]),
    Mutation("cwd-grad-pass-p-s-p-t-swapped", "fgdkern/reference/channel_passes.py",
             '(s - c["lse_s"]).exp() - (t - c["lse_t"]).exp()',
             '(t - c["lse_t"]).exp() - (s - c["lse_s"]).exp()',
             [CWD, "-k", "fused_matches_reference and torch"]),
    Mutation("pkd-fused-std-biased", "fgdkern/reference/channel_passes.py",
             "r_s = (ch[PKD_CHAN.m2_s] / (M - 1)).sqrt()", "r_s = (ch[PKD_CHAN.m2_s] / M).sqrt()",
             [PKD, "-k", "fused_matches_reference and torch"]),
    Mutation("pkd-m2-factor-two-dropped", "fgdkern/reference/channel_passes.py",
             "rows = dict(a=2 * scale * df_dm2_s", "rows = dict(a=scale * df_dm2_s",
             [PKD, "-k", "fused_matches_reference and torch"]),
    Mutation("pkd-grad-pass-teacher-term-dropped", "fgdkern/reference/channel_passes.py",
             '+ c["b"] * (t - c["mean_t"])', '+ c["b"] * t',
             [PKD, "-k", "fused_matches_reference and torch"]),
    Mutation("triton-pkd-coef-sigma-share-dropped", "fgdkern/triton/pkd_grad.py",
             "df_dm2_s = 1 / (sig_s * sig_s) + df_dsig_s * 0.5 / (p0 * r_s)",
             "df_dm2_s = 1 / (sig_s * sig_s)",
             ["tests/triton/test_level_math.py"]),
    Mutation("triton-level-math-items-group-stride", "fgdkern/triton/level_math.py",
             "item = (i // C) * ROWS * C + i % C", "item = (i // C) * C + i % C",
             ["tests/triton/test_level_math.py"]),
    Mutation("triton-level-sums-scale-dropped", "fgdkern/triton/level_math.py",
             "tl.store(out + l, tl.sum(acc, 0) * p1)", "tl.store(out + l, tl.sum(acc, 0))",
             ["tests/triton/test_level_math.py"]),
    Mutation("triton-fgd-terms-rela-hw-dropped", "fgdkern/triton/fgd_terms.py",
             "other=0.0) + HW * u * u, 0)", "other=0.0) + u * u, 0)",
             [FGD_TERMS, "-k", "matches"]),
    Mutation("triton-fgd-terms-grad-images-not-added", "fgdkern/triton/fgd_terms_grad.py",
             "tl.zeros(mask.shape, tl.int32)) > 0", "tl.zeros(mask.shape, tl.int32)) > 1",
             [FGD_TERMS, "-k", "matches"]),
    Mutation("triton-fgd-terms-grad-layernorm-hn-term-dropped", "fgdkern/triton/fgd_terms_grad.py",
             "g_h = (g_hn - tl.sum(g_hn, 0) / H - hn * (tl.sum(g_hn * hn, 0) / H)) * rstd",
             "g_h = (g_hn - tl.sum(g_hn, 0) / H) * rstd", [FGD_TERMS, "-k", "matches"]),
    Mutation("triton-fgd-terms-grad-softmax-dot-dropped", "fgdkern/triton/fgd_terms_grad.py",
             "tl.store(pixc + A_SIGN * HW + p, y * (g_y - dot) * (inv_temp / C), mask=pn)",
             "tl.store(pixc + A_SIGN * HW + p, y * g_y * (inv_temp / C), mask=pn)",
             [FGD_TERMS, "-k", "matches"]),
    Mutation("mgd-fused-batch-mean-dropped", "fgdkern/ops/mgd.py",
             "p[:, IMIT_PIX.sq_d].sum() / s.shape[0]", "p[:, IMIT_PIX.sq_d].sum()",
             [MGD, "-k", "fused_matches_reference and torch"]),
    Mutation("mgd-mask-keeps-lambda", "fgdkern/losses/mgd.py",
             "<= 1 - lambda_mgd)", "> 1 - lambda_mgd)",
             [MGD, "-k", "drawn_masks or ones_and_zeros"]),
    # In the references: only the hand-computed cases and the loops can see them.
    Mutation("cwd-kl-reversed", "fgdkern/reference/cwd.py",
             "(log_p_t.exp() * (log_p_t - log_p_s))", "(log_p_s.exp() * (log_p_s - log_p_t))",
             ["tests/reference/test_cwd.py"]),
    Mutation("pkd-std-biased", "fgdkern/reference/pkd.py",
             "std = F.std((0, 2, 3), keepdim=True)",
             "std = F.std((0, 2, 3), keepdim=True, correction=0)",
             ["tests/reference/test_pkd.py"]),
    Mutation("mgd-generation-relu-dropped", "fgdkern/reference/mgd.py",
             "padding=1).relu()", "padding=1)",
             ["tests/reference/test_mgd.py"]),
    # In the reference itself: only the hand-computed cases and the loop can see them.
    Mutation("fkd-feat-sqrt-dropped", "fgdkern/reference/fkd.py",
             "feat = safe_sqrt(((t - conv1x1(s, p.adapt_weight, p.adapt_bias)).square() * M)"
             ".sum())",
             "feat = ((t - conv1x1(s, p.adapt_weight, p.adapt_bias)).square() * M).sum()",
             ["tests/reference/test_fkd.py", "-k", "by_hand"]),
    Mutation("fkd-sqrt-gradient-at-zero-nan", "fgdkern/reference/fkd.py",
             "return torch.where(positive, root, torch.zeros_like(x))", "return x.sqrt()",
             ["tests/reference/test_fkd.py", "-k", "zero"]),
]


def copy_tree(dst: Path) -> None:
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=IGNORED)
        else:
            shutil.copy2(src, dst / name)


def check_targets(mutations) -> list:
    """Mutations whose target text is not found exactly once in the working tree."""
    bad = []
    for m in mutations:
        n = (ROOT / m.path).read_text().count(m.old)
        if n != 1:
            bad.append(f"{m.name}: {m.path} contains the target {n} times (want 1): {m.old!r}")
    return bad


def run_tests(copy: Path, args) -> tuple[int, str, float]:
    files = [a for a in args if not a.startswith("-") and (copy / a.split("::")[0]).exists()]
    opts = args[next((i for i, a in enumerate(args) if a.startswith("-")), len(args)):]
    if not files:
        return 5, "no test file of this mutation exists yet", 0.0
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-rf", "-p", "no:cacheprovider",
           *files, *opts]
    t0 = time.time()
    run = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True)
    return run.returncode, run.stdout + run.stderr, time.time() - t0


def first_failure(output: str) -> str:
    m = re.search(r"^FAILED (\S+)", output, re.M)  # a failed test, not an error
    return m.group(1) if m else "?"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="names of the mutations to plant")
    ap.add_argument("--baseline", action="store_true",
                    help="first run the selected tests on the unmutated copy")
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    opts = ap.parse_args(argv)
    chosen = [m for m in MUTATIONS if not opts.only or m.name in opts.only]
    if opts.list:
        for m in chosen:
            print(f"{m.name:32} {m.path}")
        return 0
    unknown = set(opts.only or []) - {m.name for m in MUTATIONS}
    bad = check_targets(chosen) + [f"unknown mutation {n}" for n in sorted(unknown)]
    if bad:
        print("mutation targets missing:\n  " + "\n  ".join(bad), file=sys.stderr)
        return 2
    survived, t_start = [], time.time()
    with tempfile.TemporaryDirectory(prefix="fgdkern-mutations-") as tmp:
        copy = Path(tmp)
        copy_tree(copy)
        if opts.baseline:
            for m in chosen:
                rc, out, _ = run_tests(copy, m.tests)
                if rc not in (0, 5):
                    print(f"baseline: the tests of {m.name} fail unmutated:\n{out[-3000:]}")
                    return 2
            print(f"baseline: the selected tests pass unmutated ({time.time() - t_start:.0f}s)")
        for m in chosen:
            target = copy / m.path
            original = target.read_text()
            target.write_text(original.replace(m.old, m.new))
            try:
                if m.path.startswith("csrc/"):
                    mutated_ext.rebuild(ROOT, copy, m.path)
                rc, out, secs = run_tests(copy, m.tests)
            finally:
                target.write_text(original)
                if m.path.startswith("csrc/"):
                    mutated_ext.restore(ROOT, copy)
            if rc == 1 and first_failure(out) != "?":
                verdict = f"caught by {first_failure(out)}"
            else:
                survived.append(m.name)
                verdict = {0: "SURVIVED (its tests passed)", 5: "SURVIVED (no test ran)"}.get(
                    rc, f"SURVIVED (pytest exit {rc}, no failed test: an error?)")
                if rc not in (0, 5):
                    print(out[-3000:])
            print(f"{m.name:32} {verdict}  [{secs:.0f}s]", flush=True)
    print(f"{len(chosen) - len(survived)}/{len(chosen)} mutations caught "
          f"in {time.time() - t_start:.0f}s")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
