from nnx.cli.app import main

main()
