# vmcred's host module and nothing for it to do.
{ ... }: { }
