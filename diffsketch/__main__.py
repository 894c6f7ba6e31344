from diffsketch.cli import app

app()
