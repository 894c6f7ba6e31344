import pytest
from typer.testing import CliRunner

from diffsketch.cli.main import app

runner = CliRunner()


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("sample", "inspect"):
        assert command in result.output


def _params(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return str(path)


def test_sample_and_inspect(prompts_dir, tmp_path):
    params = _params(tmp_path, f"model: {{id: tiny, device: cpu}}\nsample: {{prompts: {prompts_dir}, trajectories: 2, steps: 2, resolution: 64, pool: 1}}\n")
    out = tmp_path / "f.zarr"
    result = runner.invoke(app, ["sample", "-p", params, "-o", str(out), "--no-progress", "-S", "sample.steps=3"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["inspect", str(out)])
    assert result.exit_code == 0, result.output
    assert "2/2 complete" in result.output and "3 DDIM steps" in result.output
    assert "unet/up3_res2" in result.output and "vae/mid_res0" in result.output
    assert "compression ratio" in result.output and "MB on disk" in result.output


def test_clear_errors_exit_1_without_traceback(prompts_dir, tmp_path):
    cases = [
        ("sample: {resolution: 500}\n", "multiple of 64"),
        ("sample: {bogus: 1}\n", "sample.bogus: unknown key"),
        (f"sample: {{prompts: {tmp_path / 'none'}}}\n", "does not exist"),
        (f"model: {{id: ./no/model}}\nsample: {{prompts: {prompts_dir}}}\n", "model path './no/model' does not exist"),
        (f"model: {{id: tiny, device: cpu}}\nsample: {{prompts: {prompts_dir}, resolution: 64, pool: 4}}\n", "sample.pool=4 is larger"),
    ]
    for text, message in cases:
        result = runner.invoke(app, ["sample", "-p", _params(tmp_path, text), "-o", str(tmp_path / "x.zarr"), "--no-progress"])
        assert result.exit_code == 1, (text, result.output)
        assert message in result.output, (message, result.output)
        assert "Traceback" not in result.output
    result = runner.invoke(app, ["inspect", str(tmp_path)])
    assert result.exit_code == 1 and "not a diffsketch feature store" in result.output


def test_analyze_then_report_regenerates_without_recomputing(tmp_path, monkeypatch):
    from test_analysis import synthetic_store

    import diffsketch.analysis.timesteps

    synthetic_store(tmp_path / "s.zarr")
    params = _params(tmp_path, "analyze: {pca_dims: 5, k_min: 2, k_max: 6, k: auto, feature_maps: 0}\n")  # a synthetic store: no model
    folders = ["--results", str(tmp_path / "res"), "--timesteps", str(tmp_path / "t.json"), "--reports", str(tmp_path / "rep")]
    result = runner.invoke(app, ["analyze", "-p", params, "--store", str(tmp_path / "s.zarr"), "--no-progress", *folders])
    assert result.exit_code == 0, result.output
    assert "k=4" in result.output and (tmp_path / "t.json").is_file()
    result = runner.invoke(app, ["analyze", "-p", params, "--store", str(tmp_path / "s.zarr"), "-S", "analyze.k_max=30", *folders])
    assert result.exit_code == 1 and "k_max=30 must be below" in result.output
    (tmp_path / "rep" / "index.html").unlink()
    monkeypatch.setattr(diffsketch.analysis.timesteps, "analyze", lambda *a, **k: pytest.fail("report must not recompute"))
    result = runner.invoke(app, ["report", "--results", str(tmp_path / "res"), "--reports", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    assert "pca-timestep" in (tmp_path / "rep" / "index.html").read_text()
    result = runner.invoke(app, ["report", "--results", str(tmp_path / "nothing")])
    assert result.exit_code == 1 and "no saved analysis" in result.output


COMPUTING = ("sample", "analyze", "prior", "train", "pairs", "distill", "evaluate", "extract", "export", "serve")


def test_boolean_options_read_as_switches_in_every_help():
    """Every on/off option has both names (--x / --no-x) and the help shows them so, with no ``<bool>`` value."""
    import typer

    group = typer.main.get_command(app)
    commands = {"": group, **group.commands}
    assert len(commands) > 15
    for name, command in commands.items():
        result = runner.invoke(app, [name, "--help"] if name else ["--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, (name, result.output)
        assert "<bool>" not in result.output, name
        flags = [p for p in command.params if p.param_type_name == "option" and getattr(p, "is_bool_flag", False)]
        for flag in flags:
            assert flag.secondary_opts, f"{name}: {flag.opts[0]} has no --no- form"
            long = next(o for o in flag.opts if o.startswith("--"))
            assert f"{long} / {flag.secondary_opts[0]}" in result.output, (name, long)
    assert "--progress / --no-progress" in runner.invoke(app, ["sample", "--help"]).output
    assert [p.name for p in group.commands["sample"].params if getattr(p, "is_bool_flag", False)] == ["overwrite", "progress", "force"]


def test_every_computing_command_takes_threads():
    for name in COMPUTING:
        result = runner.invoke(app, [name, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0 and "--threads auto|N" in result.output, name
