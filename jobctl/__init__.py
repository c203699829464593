"""jobctl: the command line client of jobd workers and jobd-master."""
