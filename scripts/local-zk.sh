# Sourced by scripts/demo.sh and scripts/make-fixture.sh: one standalone ZooKeeper from
# Debian's package, on a free loopback port, its data and log under "<dir>/zk". (The tests
# start theirs in tests/common/mod.rs.)
#
#   local_zk_config <dir>          picks the port (ZK_PORT) and writes <dir>/zk/zoo.cfg
#   local_zk_start <dir> <heap>    starts it (ZK_PID, set before the wait so a trap can stop
#                                  it) and returns once it serves

local_zk_config() {
  local dir=$1
  ZK_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  mkdir -p "$dir/zk/data"
  cat > "$dir/zk/zoo.cfg" <<CFG
tickTime=1000
dataDir=$dir/zk/data
clientPort=$ZK_PORT
clientPortAddress=127.0.0.1
4lw.commands.whitelist=*
admin.enableServer=false
CFG
}

local_zk_start() {
  local dir=$1 heap=$2
  setsid java "-Xmx$heap" -cp /usr/share/java/zookeeper.jar org.apache.zookeeper.server.ZooKeeperServerMain \
    "$dir/zk/zoo.cfg" > "$dir/zk/zk.log" 2>&1 &
  ZK_PID=$!
  # `ruok` answers before the server serves; `srvr` shows a Mode: line only once it does.
  for _ in $(seq 1 240); do
    if timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$ZK_PORT && echo srvr >&3 && cat <&3" 2>/dev/null | grep -q '^Mode:'; then
      return 0
    fi
    sleep 0.25
  done
  echo "ZooKeeper did not start on 127.0.0.1:$ZK_PORT in 60 s; its log: $dir/zk/zk.log" >&2
  return 1
}
