"""DVC stage `evaluate`: the student against baselines on real photos -> reports/eval."""

from diffsketch.cli import app

if __name__ == "__main__":
    app(["evaluate", "--params", "params.yaml", "--student", "models/student.safetensors", "--out", "reports/eval"])
