# -*- mode: ruby -*-
# vi: set ft=ruby :
#
# What every VM of the cnetctl labs has, for both Vagrantfiles (vagrant/Vagrantfile, one VM, and
# vagrant/two-vm/Vagrantfile, one VM per host of a manifest): the Debian 12 box, this checkout
# copied to /cnetctl with rsync (the Debian box has no VirtualBox guest additions), and its
# memory and CPUs on VirtualBox and libvirt. Each Vagrantfile adds its own provisioning.

ROOT = File.expand_path("..", __dir__)
RSYNC_EXCLUDE = [".git/", ".venv/", "*.egg-info/", ".pytest_cache/", ".mypy_cache/", ".ruff_cache/",
                 "__pycache__/", "vagrant/.vagrant/", "vagrant/two-vm/.vagrant/"].freeze

def cnetctl_vm(config, cpus:, memory: 1024, name: nil)
  config.vm.box = "debian/bookworm64"
  config.vm.synced_folder ".", "/vagrant", disabled: true
  config.vm.synced_folder ROOT, "/cnetctl", type: "rsync", rsync__exclude: RSYNC_EXCLUDE

  config.vm.provider "virtualbox" do |vb|
    vb.name = name if name
    vb.memory = memory
    vb.cpus = cpus
  end
  config.vm.provider "libvirt" do |lv|
    lv.memory = memory
    lv.cpus = cpus
  end
end
