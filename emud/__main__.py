from emud.cli import console

console()
