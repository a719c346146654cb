from bcsync.cli import main

main()
