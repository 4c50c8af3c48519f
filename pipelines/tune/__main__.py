from .stage import main

main()
