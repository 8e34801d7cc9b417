from spmctl.cli import main

main()
