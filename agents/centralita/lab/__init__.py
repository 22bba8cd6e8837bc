"""The lab: Debian sid test VMs (systemd-nspawn) and peer hosts in network namespaces."""
