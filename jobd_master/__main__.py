from jobd_master.cli import main

main()
