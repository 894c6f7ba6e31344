from diffsketch.cli.main import app

app()
