#!/usr/bin/python3
"""Tests of tools/convert_s4_checkpoint.py (ctest: tools_convert_checkpoint).

Builds state_dicts of torch tensors with the official S4 code's names and
shapes for each block kind (our own code), saves them the ways checkpoints
come (a bare .pt state_dict, a Lightning-style .ckpt with 'model.'
prefixes, example.py's {'model': ...} with DataParallel's 'module.'),
runs the converter as a subprocess and checks the written config.pbtxt
(parsed by protobuf's own text_format with the generated model_config_pb2)
and weights.safetensors; converts the shipped fixture models
(tests/data/s4_reference) back from checkpoints, the training script's
train.ckpt files among them (also with their hyper-parameters pickled as
omegaconf DictConfigs, and with omegaconf not importable), and expects the
shipped configs and tensors; and feeds bad inputs and options the stack
cannot serve, expecting exit status 1 and a one-line message naming the
option.

    /usr/bin/python3 tests/tools/test_convert.py
"""

import contextlib
import copy
import io
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.dont_write_bytecode = True
ROOT = Path(__file__).resolve().parents[2]
CONVERTER = ROOT / "tools" / "convert_s4_checkpoint.py"
FIXTURE = ROOT / "tests" / "data" / "s4_reference"
sys.path.insert(0, str(ROOT / "tools" / "s4ref"))
sys.path.insert(0, str(ROOT / "tools"))

try:
    import numpy as np
    import torch
except ImportError as e:
    print(f"test_convert: needs NumPy and PyTorch ({e}); scripts/install-deps.sh --test")
    sys.exit(1)

import s4io  # noqa: E402

FIXTURE_MODELS = ["s4-dplr-post", "s4-dplr2-pre-long", "s4-bidir", "s4-diag-zoh", "s4d-minimal"]
# Flags the shapes cannot tell, per fixture model: these checkpoints have no
# hyper-parameters.
DEFAULTS = ["--dt-transform", "exp", "--real-transform", "exp", "--imag-transform", "none",
            "--dt-fast", "false"]
FIXTURE_FLAGS = {
    "s4-dplr-post": DEFAULTS + ["--postnorm", "--activation", "gelu"],
    "s4-dplr2-pre-long": DEFAULTS + ["--prenorm", "--activation", "gelu", "--max-length", "64"],
    "s4-bidir": DEFAULTS + ["--postnorm", "--activation", "identity", "--max-length", "32"],
    "s4-diag-zoh": DEFAULTS + ["--prenorm", "--activation", "gelu", "--discretization", "zoh",
                               "--max-length", "32"],
    "s4d-minimal": ["--postnorm", "--max-length", "64"],
}
sys.path.insert(0, str(ROOT / "tools" / "s4ref"))
import train_fixtures  # noqa: E402
TRAIN_MODELS = [m["name"] for m in train_fixtures.TRAIN_MODELS]
TRAIN_ARGS = {m["name"]: m.get("convert_args", []) + ["--description", m["description"]]
              for m in train_fixtures.TRAIN_MODELS}


# ---------------------------------------------------------------------------
# State dicts with the official names and shapes
# ---------------------------------------------------------------------------

def block_sd(gen, kind, prefix, H, N2, S=None, R=1, ch=1, out="glu", l_kernel=0):
    """One block's tensors. kind: 'dplr' | 'diag' (S4Block) | 's4d' (minimal)."""
    S = S or H
    r = lambda *shape: torch.randn(*shape, generator=gen)  # noqa: E731
    sd = {}
    if kind == "s4d":
        sd[prefix + "D"] = r(H)
        sd[prefix + "kernel.C"] = r(H, N2, 2)
        sd[prefix + "kernel.log_dt"] = r(H)
        sd[prefix + "kernel.log_A_real"] = r(H, N2)
        sd[prefix + "kernel.A_imag"] = r(H, N2).abs()
        sd[prefix + "output_linear.0.weight"] = r(2 * H, H, 1)
        sd[prefix + "output_linear.0.bias"] = r(2 * H)
        return sd
    k = prefix + "layer.kernel."
    sd[prefix + "layer.D"] = r(1, H)
    sd[k + "inv_dt"] = r(H, 1)
    sd[k + "C"] = r(ch, H, N2, 2)
    sd[k + "B"] = r(1, S, N2, 2)
    sd[k + "A_real"] = r(S, N2)
    sd[k + "A_imag"] = r(S, N2).abs()
    if kind == "dplr":
        sd[k + "P"] = r(R, S, N2, 2)
        sd[k + "l_kernel"] = torch.tensor(l_kernel)
    if out == "glu":
        sd[prefix + "output_linear.0.weight"] = r(2 * H, H)
        sd[prefix + "output_linear.0.bias"] = r(2 * H)
    elif out == "linear":
        sd[prefix + "output_linear.0.weight"] = r(H, H)
        sd[prefix + "output_linear.0.bias"] = r(H)
    return sd


def model_sd(seed, kind, n_layers, H, N2, d_input=None, d_output=None, norms=True,
             layer_form="s4_layers", **block):
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    if d_input is not None:
        sd["encoder.weight"] = torch.randn(H, d_input, generator=gen)
        sd["encoder.bias"] = torch.randn(H, generator=gen)
    for i in range(n_layers):
        sd.update(block_sd(gen, kind, f"{layer_form}.{i}.", H, N2, **block))
    if norms:
        for i in range(n_layers):
            sd[f"norms.{i}.weight"] = 1 + 0.1 * torch.randn(H, generator=gen)
            sd[f"norms.{i}.bias"] = 0.1 * torch.randn(H, generator=gen)
    if d_output is not None:
        sd["decoder.weight"] = torch.randn(d_output, H, generator=gen)
        sd["decoder.bias"] = torch.randn(d_output, generator=gen)
    return sd


def prefixed(sd, prefix):
    return {prefix + k: v for k, v in sd.items()}


def canonical(name):
    """The converter's output name for an input name."""
    for p in ("model.", "module."):
        while name.startswith(p):
            name = name[len(p):]
    if name.startswith("layers."):
        name = "s4_" + name
    return name


# ---------------------------------------------------------------------------
# Cases, all converted up front (in parallel: each run imports torch)
# ---------------------------------------------------------------------------

class Case:
    def __init__(self, name, payload, args, sd=None, expect=None, pre=None, subproc=False):
        self.name, self.payload, self.args = name, payload, args
        self.subproc = subproc  # run as a subprocess (else main() in this process)
        self.sd = sd            # the input state_dict, for value checks
        self.expect = expect    # expected config fields (s4 ones under 's4')
        self.pre = pre          # callable(tmp) run before converting
        self.result = None


def make_cases():
    cases = []
    # A. DPLR rank 1, bare state_dict (.pt), example.py names.
    sd = model_sd(1, "dplr", 2, H=4, N2=4, d_input=3, d_output=5, l_kernel=128)
    cases.append(Case("dplr_pt", ("pt", sd), ["--code-defaults"], sd, subproc=True, expect={
        "d_input": 3, "d_output": 5, "max_length": 128,
        "s4": {"n_layers": 2, "d_model": 4, "d_state": 8, "kernel": "KERNEL_KIND_DPLR",
               "discretization": "DISCRETIZATION_KIND_BILINEAR", "rank": 1,
               "activation": "ACTIVATION_GELU", "output_linear": "OUTPUT_LINEAR_GLU",
               "norm": "NORM_PLACEMENT_POST", "residual": True, "bidirectional": False,
               "encoder": True, "decoder": True}}))
    # B. DPLR rank 2, bidirectional, n_ssm=1, 'layers.<i>.' names, Lightning
    #    .ckpt with 'model.' prefixes and the usual extra entries.
    sd = model_sd(2, "dplr", 1, H=3, N2=3, d_input=2, d_output=1, layer_form="layers",
                  S=1, R=2, ch=2, l_kernel=0)
    ckpt = {"epoch": 7, "global_step": 700, "pytorch-lightning_version": "1.9.0",
            "state_dict": prefixed(sd, "model."), "optimizer_states": [{}],
            "hyper_parameters": {"d_model": 3}}
    cases.append(Case("dplr2_bidir_ckpt", ("ckpt", ckpt),
                      ["--prenorm", "--activation", "identity", "--max-length", "77",
                       "--version", "3", "--description", "bidirectional test model",
                       "--dt-transform", "softplus", "--real-transform", "relu",
                       "--imag-transform", "sigmoid", "--dt-fast", "true"], sd,
                      subproc=True, expect={
        "description": "bidirectional test model.", "d_input": 2, "d_output": 1, "max_length": 77,
        "s4": {"n_layers": 1, "d_model": 3, "d_state": 6, "kernel": "KERNEL_KIND_DPLR",
               "rank": 2, "activation": "ACTIVATION_IDENTITY", "norm": "NORM_PLACEMENT_PRE",
               "bidirectional": True, "dt_transform": "PARAM_TRANSFORM_SOFTPLUS",
               "real_transform": "PARAM_TRANSFORM_RELU",
               "imag_transform": "PARAM_TRANSFORM_SIGMOID", "dt_fast": True}}))
    # C. SSMKernelDiag, example.py's {'model': ...} with DataParallel names,
    #    no norms, bilinear.
    sd = model_sd(3, "diag", 2, H=4, N2=2, d_input=1, d_output=2, norms=False, S=2)
    cases.append(Case("diag_model_key", ("pt", {"model": prefixed(sd, "module."), "acc": 91.0,
                                                "epoch": 3}),
                      ["--discretization", "bilinear", "--max-length", "100", "--code-defaults"],
                      sd,
                      subproc=True, expect={
        "max_length": 100,
        "s4": {"kernel": "KERNEL_KIND_DIAGONAL", "discretization": "DISCRETIZATION_KIND_BILINEAR",
               "rank": 0, "norm": "NORM_PLACEMENT_NONE", "d_state": 4, "bidirectional": False}}))
    # D. Minimal s4d.py blocks, no encoder/decoder.
    sd = model_sd(4, "s4d", 3, H=5, N2=3)
    cases.append(Case("s4d_plain", ("pt", sd), ["--max-length", "50", "--postnorm"], sd,
                      subproc=True, expect={
        "d_input": 5, "d_output": 5, "max_length": 50,
        "s4": {"n_layers": 3, "d_model": 5, "d_state": 6, "kernel": "KERNEL_KIND_DIAGONAL",
               "discretization": "DISCRETIZATION_KIND_ZOH", "rank": 0,
               "output_linear": "OUTPUT_LINEAR_GLU", "norm": "NORM_PLACEMENT_POST",
               "encoder": False, "decoder": False}}))
    # E. S4Block with final_act='id' (a plain H x H linear), no norms, no encoder.
    sd = model_sd(5, "dplr", 1, H=2, N2=2, norms=False, out="linear", l_kernel=16)
    cases.append(Case("linear_out", ("pt", sd), ["--final-act", "tanh", "--code-defaults"], sd, {
        "max_length": 16, "s4": {"output_linear": "OUTPUT_LINEAR_LINEAR",
                                 "output_activation": "ACTIVATION_TANH",
                                 "norm": "NORM_PLACEMENT_NONE", "encoder": False}}))
    # F. S4Block with final_act=None: no output linear.
    sd = model_sd(6, "diag", 1, H=2, N2=2, norms=False, out="none", d_output=1)
    cases.append(Case("no_out", ("pt", sd), ["--max-length", "8", "--code-defaults"], sd, {
        "d_output": 1, "s4": {"output_linear": "OUTPUT_LINEAR_NONE", "decoder": True}}))

    # The shipped fixture, back from Lightning-style checkpoints.
    for name in FIXTURE_MODELS:
        w, _ = s4io.read_safetensors(FIXTURE / name / "1" / "weights.safetensors")
        sd = {k.replace("s4_layers.", "layers."): torch.from_numpy(v) for k, v in w.items()}
        cases.append(Case("fixture_" + name, ("ckpt", {"state_dict": prefixed(sd, "model.")}),
                          FIXTURE_FLAGS[name], sd, "fixture"))

    # The training script's checkpoints (tests/data/s4_reference/train-*):
    # converted from their hyper-parameters, as plain dicts (as shipped) and
    # as omegaconf DictConfigs (as train.py's Lightning module saves them).
    for name in TRAIN_MODELS:
        ckpt = torch.load(FIXTURE / name / "train.ckpt", map_location="cpu")
        cases.append(Case("train_" + name, ("ckpt", ckpt), TRAIN_ARGS[name], None, "train",
                          subproc=name == "train-s4-default"))
    ckpt = torch.load(FIXTURE / "train-s4-default" / "train.ckpt", map_location="cpu")
    try:
        from omegaconf import DictConfig
        dc = dict(ckpt)
        dc["hyper_parameters"] = DictConfig(ckpt["hyper_parameters"])
        dc["hparams_type"] = DictConfig
        cases.append(Case("dictconfig", ("ckpt", dc), TRAIN_ARGS["train-s4-default"], None,
                          "train", subproc=True))
        cases.append(Case("dictconfig_no_omegaconf", ("ckpt", dc), TRAIN_ARGS["train-s4-default"],
                          None, "train", subproc=True))
    except ImportError:
        print("test_convert: omegaconf (python3-omegaconf) is missing: the DictConfig cases "
              "cannot be built; scripts/install-deps.sh --test installs it")
        raise

    # Bad inputs: (case, payload, args, words the message must contain).
    base = model_sd(7, "dplr", 2, H=2, N2=2, d_input=1, d_output=1, l_kernel=8)
    bad = dict(base)
    bad["s4_layers.0.layer.kernel.log_w"] = torch.zeros(2)
    bad["head.weight"] = torch.zeros(2, 2)
    cases.append(Case("bad_unknown", ("pt", bad), [], subproc=True, expect=[
        "unknown tensor", "s4_layers.0.layer.kernel.log_w", "head.weight"]))
    bad = dict(base)
    bad["s4_layers.1.layer.kernel.B"] = bad["s4_layers.1.layer.kernel.B"].clone()
    bad["s4_layers.1.layer.kernel.B"][0, 1, 0, 1] = float("nan")
    cases.append(Case("bad_nan", ("ckpt", {"state_dict": prefixed(bad, "model.")}),
                      ["--code-defaults"], subproc=True,
                      expect=["s4_layers.1.layer.kernel.B", "NaN"]))
    bad = dict(base)
    bad["encoder.weight"] = bad["encoder.weight"].clone()
    bad["encoder.weight"][1, 0] = float("inf")
    cases.append(Case("bad_inf", ("pt", bad), ["--code-defaults"],
                      expect=["encoder.weight", "Inf"]))
    bad = dict(base)
    bad["s4_layers.0.layer.kernel.C"] = torch.zeros(1, 3, 2, 2)
    cases.append(Case("bad_shape", ("pt", bad), [], expect=["s4_layers.0.layer.kernel.C", "shape"]))
    cases.append(Case("bad_missing_file", None, [], subproc=True, expect=["no such file", "does-not-exist.pt"]))
    cases.append(Case("bad_exists", ("pt", base), ["--code-defaults"],
                      expect=["exists", "--force"],
                      pre=lambda repo: (repo / "bad_exists" / "1").mkdir(parents=True) or
                      (repo / "bad_exists" / "1" / "weights.safetensors").write_bytes(b"x")))
    return cases


def save_payload(path, payload):
    kind, obj = payload
    torch.save(obj, path)


def run_converter(checkpoint, repo, name, args):
    return subprocess.run([sys.executable, "-B", str(CONVERTER), str(checkpoint),
                           "--repo", str(repo), "--name", name] + list(args),
                          capture_output=True, text=True, timeout=120)


def run_without_omegaconf(checkpoint, repo, name, args):
    """The converter as a subprocess in which `import omegaconf` fails."""
    code = ("import runpy, sys; sys.modules['omegaconf'] = None; "
            f"sys.argv = {[str(CONVERTER), str(checkpoint), '--repo', str(repo), '--name', name] + list(args)!r}; "
            f"runpy.run_path({str(CONVERTER)!r}, run_name='__main__')")
    return subprocess.run([sys.executable, "-B", "-c", code], capture_output=True, text=True,
                          timeout=120)


def run_in_process(checkpoint, repo, name, args):
    """main() in this process, with a subprocess-like result."""
    import convert_s4_checkpoint as conv
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = conv.main([str(checkpoint), "--repo", str(repo), "--name", name] + list(args))
    return subprocess.CompletedProcess([], rc, out.getvalue(), err.getvalue())


class ConvertCheckpointTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(prefix="s4conv-"))
        cls.repo = cls.tmp / "repo"
        cls.repo.mkdir()
        cls.cases = {c.name: c for c in make_cases()}
        jobs = []
        for c in cls.cases.values():
            if c.payload is None:
                ckpt = cls.tmp / "does-not-exist.pt"
            elif c.expect == "train":
                # As shipped: train.ckpt (its name is in the outputs), converted
                # under the fixture's model name, each into its own repository.
                ckpt = cls.tmp / c.name / "train.ckpt"
                ckpt.parent.mkdir()
                save_payload(ckpt, c.payload)
            else:
                ckpt = cls.tmp / (c.name + "." + c.payload[0])
                save_payload(ckpt, c.payload)
            if c.pre:
                c.pre(cls.repo)
            jobs.append((c, ckpt))
        # A subprocess costs a torch import (seconds): the main kinds and
        # error paths go through the real command line, the rest through
        # main() in this process.
        runner = {"dictconfig_no_omegaconf": run_without_omegaconf}
        with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
            futures = [(c, pool.submit(runner.get(c.name, run_converter), ckpt,
                                       cls.repo_of(c), cls.model_name(c), c.args))
                       for c, ckpt in jobs if c.subproc]
            for c, ckpt in jobs:
                if not c.subproc:
                    c.result = run_in_process(ckpt, cls.repo_of(c), cls.model_name(c), c.args)
            for c, f in futures:
                c.result = f.result()

    @classmethod
    def repo_of(cls, c):
        return cls.tmp / ("repo_" + c.name) if c.expect == "train" else cls.repo

    @staticmethod
    def model_name(c):
        if c.expect != "train":
            return c.name
        return "train-s4-default" if c.name.startswith("dictconfig") else c.name[len("train_"):]

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    # -- helpers ----------------------------------------------------------

    def converted(self, case_name):
        c = self.cases[case_name]
        self.assertEqual(c.result.returncode, 0, f"{case_name}: {c.result.stderr}")
        version = c.args[c.args.index("--version") + 1] if "--version" in c.args else "1"
        d = self.repo_of(c) / self.model_name(c)
        cfg_text = (d / "config.pbtxt").read_text()
        cfg = s4io.parse_model_config(cfg_text)
        blob = (d / version / "weights.safetensors").read_bytes()
        tensors, meta, order = s4io.parse_safetensors(blob, case_name)
        return c, cfg, cfg_text, tensors, order

    def assert_config(self, cfg, expect, name):
        self.assertEqual(cfg["name"], name)
        self.assertEqual(cfg["s4"]["weight_naming"], "WEIGHT_NAMING_S4_REFERENCE")
        self.assertEqual(cfg["s4"]["layer_norm_eps"], 1e-5)
        self.assertIs(cfg["s4"]["residual"], True)
        for k, v in expect.items():
            if k == "s4":
                for kk, vv in v.items():
                    self.assertEqual(cfg["s4"][kk], vv, f"s4.{kk}")
            else:
                self.assertEqual(cfg[k], v, k)

    def assert_tensors(self, tensors, sd):
        want = {canonical(k): v for k, v in sd.items()}
        self.assertEqual(sorted(tensors), sorted(want))
        for name, t in want.items():
            got = tensors[name]
            t = t.detach().numpy()
            if name.endswith("l_kernel"):
                self.assertEqual(got.dtype, np.int64, name)
                self.assertEqual(got.shape, (), name)
                self.assertEqual(int(got), int(t), name)
            else:
                self.assertEqual(got.dtype, np.float32, name)
                self.assertEqual(got.shape, t.shape, name)
                np.testing.assert_array_equal(got, t.astype(np.float32), err_msg=name)

    # -- successful conversions -----------------------------------------

    def check_synthetic(self, name):
        c, cfg, text, tensors, order = self.converted(name)
        self.assert_config(cfg, c.expect, name)
        self.assert_tensors(tensors, c.sd)
        self.assertIn("wrote", c.result.stdout)
        return tensors, order

    def test_dplr_bare_state_dict(self):
        tensors, order = self.check_synthetic("dplr_pt")
        # canonical order: encoder, layers (official registration order), norms, decoder
        self.assertEqual(order[:3], ["encoder.weight", "encoder.bias", "s4_layers.0.layer.D"])
        self.assertEqual(order[-4:], ["norms.1.weight", "norms.1.bias",
                                      "decoder.weight", "decoder.bias"])
        self.assertEqual(tensors["s4_layers.1.layer.kernel.P"].shape, (1, 4, 4, 2))

    def test_dplr_rank2_bidirectional_lightning_ckpt(self):
        tensors, _ = self.check_synthetic("dplr2_bidir_ckpt")
        self.assertEqual(tensors["s4_layers.0.layer.kernel.C"].shape, (2, 3, 3, 2))
        self.assertEqual(tensors["s4_layers.0.layer.kernel.A_real"].shape, (1, 3))
        self.assertFalse(any(k.startswith("layers.") for k in tensors))

    def test_diag_example_checkpoint_dataparallel(self):
        self.check_synthetic("diag_model_key")

    def test_minimal_s4d_without_encoder_decoder(self):
        tensors, _ = self.check_synthetic("s4d_plain")
        self.assertEqual(tensors["s4_layers.2.output_linear.0.weight"].shape, (10, 5, 1))

    def test_plain_linear_output(self):
        self.check_synthetic("linear_out")

    def test_no_output_linear(self):
        self.check_synthetic("no_out")

    def test_fixture_round_trip(self):
        for name in FIXTURE_MODELS:
            with self.subTest(model=name):
                c, cfg, text, tensors, order = self.converted("fixture_" + name)
                want = s4io.parse_model_config((FIXTURE / name / "config.pbtxt").read_text())
                for k in ("description", "name"):
                    cfg.pop(k)
                    want.pop(k)
                self.assertEqual(cfg, want)
                self.assert_tensors(tensors, c.sd)
                w, _ = s4io.read_safetensors(FIXTURE / name / "1" / "weights.safetensors")
                self.assertEqual(order, list(w))   # same (official) order as the fixture

    def test_code_defaults_are_listed(self):
        c, cfg, *_ = self.converted("dplr_pt")
        self.assertIn("assumed the official code's defaults: dt-transform=exp, "
                      "real-transform=exp, imag-transform=none, dt-fast=False, "
                      "activation=GELU, norm=post", c.result.stdout)
        self.assertEqual(cfg["s4"]["dt_transform"], "PARAM_TRANSFORM_EXP")
        self.assertEqual(cfg["s4"]["imag_transform"], "PARAM_TRANSFORM_NONE")

    def test_training_script_checkpoints(self):
        """train.ckpt converts, from its hyper-parameters alone, to exactly the
        shipped config.pbtxt and weights (which the C++ test serves against the
        reference's outputs)."""
        for name in TRAIN_MODELS:
            with self.subTest(model=name):
                self.assert_as_shipped("train_" + name, name)

    def test_dictconfig_hyper_parameters(self):
        """Lightning pickles train.py's config as an omegaconf DictConfig; it
        is read without omegaconf (also when it cannot be imported)."""
        for case in ("dictconfig", "dictconfig_no_omegaconf"):
            with self.subTest(case=case):
                self.assert_as_shipped(case, "train-s4-default")

    def test_training_state_dict_without_hyper_parameters(self):
        """The training script's tensors alone: the flags say what the
        hyper-parameters would; the weights come out as from the .ckpt."""
        base = torch.load(FIXTURE / "train-s4-default" / "train.ckpt", map_location="cpu")
        path = self.tmp / "sd_only.pt"
        torch.save(base["state_dict"], path)
        r = run_in_process(path, self.repo, "sd_only", [])
        self.assertEqual(r.returncode, 1)
        self.assertIn("--dt-transform", r.stderr)
        self.assertIn("softplus", r.stderr)
        r = run_in_process(path, self.repo, "sd_only", [
            "--dt-transform", "softplus", "--real-transform", "exp", "--imag-transform", "none",
            "--dt-fast", "false", "--activation", "gelu", "--norm", "pre", "--residual", "true"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual((self.repo / "sd_only" / "1" / "weights.safetensors").read_bytes(),
                         (FIXTURE / "train-s4-default" / "1" / "weights.safetensors")
                         .read_bytes().replace(b"train.ckpt", b"sd_only.pt"))
        cfg = s4io.parse_model_config((self.repo / "sd_only" / "config.pbtxt").read_text())
        want = s4io.parse_model_config(
            (FIXTURE / "train-s4-default" / "config.pbtxt").read_text())
        for c in (cfg, want):
            c.pop("name")
            c.pop("description")
        self.assertEqual(cfg, want)

    def test_residual_alpha_zero_is_no_residual(self):
        """Residual(alpha=0) returns the block's output alone: no residual."""
        base = torch.load(FIXTURE / "train-s4-default" / "train.ckpt", map_location="cpu")
        hp = copy.deepcopy(base["hyper_parameters"])
        hp["model"]["residual"] = {"_name_": "R", "alpha": 0.0, "beta": 1.0}
        path = self.tmp / "alpha0.ckpt"
        torch.save({**base, "hyper_parameters": hp}, path)
        r = run_in_process(path, self.repo, "alpha0", [])
        self.assertEqual(r.returncode, 0, r.stderr)
        cfg = s4io.parse_model_config((self.repo / "alpha0" / "config.pbtxt").read_text())
        self.assertIs(cfg["s4"]["residual"], False)

    def assert_as_shipped(self, case_name, model):
        c = self.cases[case_name]
        self.assertEqual(c.result.returncode, 0, f"{case_name}: {c.result.stderr}")
        d = self.repo_of(c) / model
        for rp in ("config.pbtxt", "1/weights.safetensors"):
            self.assertEqual((d / rp).read_bytes(), (FIXTURE / model / rp).read_bytes(),
                             f"{case_name}: {rp} differs from the shipped fixture")
        cfg = s4io.parse_model_config((d / "config.pbtxt").read_text())
        self.assertEqual(cfg["name"], model)

    # -- bad inputs -----------------------------------------------------

    def test_bad_inputs(self):
        for name, c in self.cases.items():
            if not name.startswith("bad_"):
                continue
            with self.subTest(case=name):
                r = c.result
                self.assertEqual(r.returncode, 1, f"{name}: {r.stdout}{r.stderr}")
                msg = r.stderr.strip()
                self.assertEqual(msg.count("\n"), 0, f"{name}: not one line: {msg}")
                self.assertTrue(msg.startswith("convert_s4_checkpoint: error: "), msg)
                for word in c.expect:
                    self.assertIn(word, msg, name)
                self.assertEqual(r.stdout, "")
        self.assertFalse((self.repo / "bad_unknown").exists())
        self.assertEqual((self.repo / "bad_exists" / "1" / "weights.safetensors").read_bytes(), b"x")

    def test_more_bad_inputs_in_process(self):
        """Edge cases through main() in this process (a subprocess each would
        cost a torch import)."""
        base = model_sd(8, "dplr", 1, H=2, N2=2, d_input=1, d_output=1, l_kernel=4)
        diag = model_sd(9, "diag", 1, H=2, N2=2, norms=False)
        untied = dict(diag)
        untied["s4_layers.0.layer.kernel.inv_dt"] = torch.zeros(2, 2)
        is_real = {k: v for k, v in diag.items() if not k.endswith("A_imag")}
        mixed = dict(base)
        mixed["layers.0.layer.D"] = base["s4_layers.0.layer.D"]
        gap = {k.replace("s4_layers.0.", "s4_layers.1."): v for k, v in base.items()}
        two_ch = dict(base)
        two_ch["s4_layers.0.layer.D"] = torch.zeros(2, 2)
        cases = [
            ("untied_dt", ("pt", untied), ["--max-length", "4"], ["inv_dt", "dt_tie=False"]),
            ("is_real", ("pt", is_real), ["--max-length", "4"], ["A_imag", "is_real"]),
            ("no_max_length", ("pt", diag), ["--code-defaults"], ["--max-length"]),
            ("prenorm_no_norms", ("pt", diag), ["--prenorm", "--max-length", "4",
                                                "--code-defaults"], ["--prenorm"]),
            ("both_prefixes", ("pt", mixed), [], ["both"]),
            ("layer_gap", ("pt", gap), [], ["missing layer(s) [0]"]),
            ("channels", ("pt", two_ch), [], ["s4_layers.0.layer.D", "channel"]),
            ("d_input", ("pt", base), ["--d-input", "7"], ["--d-input 7"]),
            ("s4d_identity", ("pt", model_sd(10, "s4d", 1, H=2, N2=2)),
             ["--activation", "identity", "--max-length", "4"], ["GELU"]),
            ("dplr_zoh", ("pt", base), ["--discretization", "zoh", "--code-defaults"],
             ["bilinear"]),
            # Without hyper-parameters, what shapes cannot tell is asked for.
            ("no_flags", ("pt", base), [], ["--dt-transform", "softplus", "--code-defaults"]),
            ("no_real_transform", ("pt", base), ["--dt-transform", "softplus"],
             ["--real-transform"]),
            ("tanh_transform", ("pt", base), ["--dt-transform", "tanh"],
             ["dt-transform", "tanh", "official kernels"]),
            ("linear_no_final_act", ("pt", model_sd(11, "diag", 1, H=2, N2=2, norms=False,
                                                     out="linear")),
             ["--code-defaults", "--max-length", "4"], ["--final-act"]),
            ("no_norm_placement", ("pt", base), DEFAULTS + ["--activation", "gelu"],
             ["--norm"]),
            ("not_a_state_dict", ("pt", [1, 2, 3]), [], ["expected a state_dict"]),
            ("mixed_entries", ("pt", {"weights": base, "epoch": 1}), [], ["'weights'", "not a tensor"]),
            ("bad_name", ("pt", base), [], ["--name"]),
        ]
        for name, payload, args, words in cases:
            with self.subTest(case=name):
                ckpt = self.tmp / f"inproc_{name}.pt"
                save_payload(ckpt, payload)
                model_name = "../evil" if name == "bad_name" else name
                r = run_in_process(ckpt, self.repo, model_name, args)
                msg = r.stderr.strip()
                self.assertEqual(r.returncode, 1, f"{name}: {msg}")
                self.assertEqual(msg.count("\n"), 0, msg)
                for word in words:
                    self.assertIn(word, msg, name)
                self.assertFalse((self.repo / name).exists())

    def test_training_options_refused_by_name(self):
        """Every option of the training script's config that the stack cannot
        serve exactly is refused, the message naming it; so are options
        nobody knows and flags that contradict the hyper-parameters."""
        base = torch.load(FIXTURE / "train-s4-default" / "train.ckpt", map_location="cpu")

        def lay(**kw):
            return lambda hp, sd: hp["model"]["layer"].update(kw)

        def mod(**kw):
            return lambda hp, sd: hp["model"].update(kw)

        def top(**kw):
            return lambda hp, sd: hp.update(kw)

        cases = [
            ("sashimi", mod(_name_="sashimi"), [], ["model._name_", "sashimi", "SaShiMi"]),
            ("unet", mod(_name_="unet"), [], ["model._name_", "U-Net"]),
            ("backbone_bidir", mod(bidirectional=True), [], ["model.bidirectional"]),
            ("pool_stride", mod(pool={"_name_": "pool", "stride": 2, "expand": None}), [],
             ["model.pool", "stride"]),
            ("pool_linear", mod(pool={"_name_": "linear", "stride": 1, "expand": None}), [],
             ["model.pool", "linear"]),
            ("highway", mod(residual="H"), [], ["model.residual", "'H'"]),
            ("decay", mod(residual="decay"), [], ["model.residual", "decay"]),
            ("residual_scaled", mod(residual={"_name_": "R", "alpha": 0.5}), [],
             ["model.residual", "alpha=0.5"]),
            ("group_norm", mod(norm="group"), [], ["model.norm", "group"]),
            ("instance_norm", mod(norm={"_name_": "instance"}), [], ["model.norm", "instance"]),
            ("transposed_ln", mod(transposed=True), [], ["model.transposed", "TransposedLN"]),
            ("layer_list", lambda hp, sd: hp["model"].update(
                layer=[hp["model"]["layer"], {"_name_": "ff"}]), [],
             ["model.layer", "list of 2"]),
            ("layer_mha", lay(_name_="mha"), [], ["model.layer._name_", "mha"]),
            ("fftconv_layer", lay(_name_="fftconv"), [], ["model.layer._name_", "fftconv"]),
            ("gate", lay(gate=4), [], ["model.layer.gate"]),
            ("bottleneck", lay(bottleneck=2), [], ["model.layer.bottleneck"]),
            ("mult_act", lay(mult_act="gelu"), [], ["model.layer.mult_act"]),
            ("channels", lay(channels=2), [], ["model.layer.channels"]),
            ("dense_kernel", lay(mode="dense"), [], ["model.layer.mode", "dense"]),
            ("ema_kernel", lay(mode="ema"), [], ["model.layer.mode", "ema"]),
            ("real_kernel", lay(mode="real"), [], ["model.layer.mode", "real"]),
            ("conv_kernel", lay(mode="conv"), [], ["model.layer.mode", "conv"]),
            ("affine", mod(residual="A"), [], ["model.residual", "'A'"]),
            ("alpha0_beta2", mod(residual={"_name_": "R", "alpha": 0.0, "beta": 2.0}), [],
             ["model.residual", "beta=2.0"]),
            ("sqrelu", lay(activation="sqrelu"), [], ["model.layer.activation", "sqrelu"]),
            ("laplace", lay(final_act="laplace"), [], ["model.layer.final_act", "laplace"]),
            ("class_encoder", top(encoder="class"), [], ["encoder", "class"]),
            ("conv1d_encoder", top(encoder={"_name_": "conv1d"}), [], ["encoder", "conv1d"]),
            ("dt_tie", lay(dt_tie=False), [], ["model.layer.dt_tie"]),
            ("is_real", lay(is_real=True), [], ["model.layer.is_real"]),
            ("bandlimit", lay(bandlimit=0.5), [], ["model.layer.bandlimit"]),
            ("tanh_dt", lay(dt_transform="tanh"), [],
             ["model.layer.dt_transform", "tanh", "NotImplementedError"]),
            ("bad_real", lay(real_transform="square"), [], ["model.layer.real_transform"]),
            ("bad_imag", lay(imag_transform="cos"), [], ["model.layer.imag_transform"]),
            ("glu_activation", lay(activation="glu"), [], ["model.layer.activation", "glu"]),
            ("modrelu", lay(activation="modrelu"), [], ["model.layer.activation"]),
            ("glu_variant", lay(final_act="glu-gelu"), [], ["model.layer.final_act", "glu-gelu"]),
            ("unknown_layer_key", lay(frobnicate=3), [], ["model.layer.frobnicate", "unknown"]),
            ("unknown_model_key", mod(magic=1), [], ["model.magic", "unknown"]),
            ("interpolation", lay(dt_transform="${model.foo}"), [],
             ["model.layer.dt_transform", "interpolation"]),
            ("position_encoder", top(encoder=["linear", "position"]), [], ["encoder", "position"]),
            ("retrieval_decoder", top(decoder="retrieval"), [], ["decoder", "retrieval"]),
            ("sum_decoder", top(decoder={"_name_": "sequence", "mode": "sum"}), [],
             ["decoder mode", "sum"]),
            ("n_layers", mod(n_layers=3), [], ["n_layers", "3", "2 layers"]),
            ("d_state", lay(d_state=16), [], ["d_state", "16", "N = 8"]),
            ("bidir_mismatch", lay(bidirectional=True), [], ["bidirectional", "1 channel"]),
            ("final_norm_mismatch", mod(prenorm=False), [], ["prenorm=False", "model.norm"]),
            ("unknown_tensor", lambda hp, sd: sd.update({"model.layers.0.extra.w": sd[
                "encoder.0.bias"]}), [], ["unknown tensor", "model.layers.0.extra.w"]),
            ("flag_disagrees", lambda hp, sd: None, ["--dt-transform", "exp"],
             ["--dt-transform exp", "softplus"]),
            ("norm_flag_disagrees", lambda hp, sd: None, ["--postnorm"], ["--norm post"]),
        ]
        for name, mutate, args, words in cases:
            with self.subTest(case=name):
                ckpt = {**base, "hyper_parameters": copy.deepcopy(base["hyper_parameters"]),
                        "state_dict": dict(base["state_dict"])}
                mutate(ckpt["hyper_parameters"], ckpt["state_dict"])
                path = self.tmp / f"train_bad_{name}.ckpt"
                torch.save(ckpt, path)
                r = run_in_process(path, self.repo, "bad_" + name, args)
                msg = r.stderr.strip()
                self.assertEqual(r.returncode, 1, f"{name}: {r.stdout}{msg}")
                self.assertEqual(msg.count("\n"), 0, msg)
                for word in words:
                    self.assertIn(word, msg, name)
                self.assertFalse((self.repo / ("bad_" + name)).exists())


if __name__ == "__main__":
    result = unittest.main(verbosity=2, exit=False).result
    sys.exit(0 if result.wasSuccessful() else 1)
