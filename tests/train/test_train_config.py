"""One loss list (models.train.config.LOSSES): the config fields, the CLI flags, the objective and the log line
all follow it; CLI help shows the dataclass defaults; importing the list loads no torch."""
import subprocess
import sys

from click.testing import CliRunner

from ccmb.cli import main
from models.train.config import LOSS_NAMES, LOSSES, LossConfig, TrainConfig


def test_every_loss_has_a_field_a_flag_and_a_default_in_help():
    assert LOSS_NAMES == ("gcpr", "fgr", "tgd", "fgd", "mlm")
    cfg = LossConfig()
    for spec in LOSSES:
        assert isinstance(getattr(cfg, spec.name), float)
    for command in ("pretrain", "finetune"):
        out = CliRunner().invoke(main, ["train", command, "--help"], terminal_width=200).output
        for spec in LOSSES:
            assert f"--{spec.name} FLOAT" in out, (command, spec.name)
        assert f"[default: {TrainConfig().losses.queue_size}]" in out
    pre = CliRunner().invoke(main, ["train", "pretrain", "--help"], terminal_width=200).output
    assert "[default: pretrain 1.0; finetune 0.0]" in pre  # tgd: on in pre-training, off in the recipes


def test_weights_follow_the_list_and_flags_reach_the_config():
    assert list(LossConfig(mlm=0.5).weights()) == ["gcpr", "fgr", "tgd", "fgd", "mlm"]
    assert "mlm" not in LossConfig().weights()  # off by default
    cfg = TrainConfig().override(loss_mlm=2.0, loss_gcpr=0.0)
    assert cfg.losses.weights() == {"fgr": 1.0, "tgd": 1.0, "fgd": 1.0, "mlm": 2.0}


def test_objective_reports_whether_every_parameter_is_used():
    import models
    from models.train.objective import R2D2Objective

    model = models.build_model("r2d2-tiny")
    assert R2D2Objective(model, LossConfig(), mask_token_id=4).uses_all_parameters
    assert not R2D2Objective(model, LossConfig(fgr=0), mask_token_id=4).uses_all_parameters
    assert not R2D2Objective(model, LossConfig(), mode="clip").uses_all_parameters
    prd2 = models.build_model("prd2-tiny")
    obj = R2D2Objective(prd2, LossConfig(mlm=1.0), mask_token_id=4)
    assert obj.uses_all_parameters and "mlm" not in obj.weights and "fgr" not in obj.weights


def test_loss_list_imports_without_torch():
    code = "import sys, models.train.config; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
