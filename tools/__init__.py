"""The command-line tools: each module parses its flags and calls the packages (`main(argv)`), and runs as
`python tools/<tool>.py` in a checkout or as `resnet-toolkit <tool>` once installed (`tools.cli`)."""
