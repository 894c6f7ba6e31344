"""DVC stage `eval-data`: copy the packaged real photos into data/eval (with their licences)."""

from diffsketch.cli import app

if __name__ == "__main__":
    app(["eval-data", "--params", "params.yaml", "--out", "data/eval"])
