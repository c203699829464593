from jobd.worker.cli import main

main()
