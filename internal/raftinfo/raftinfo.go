// Package raftinfo reads what a Dragonboat NodeHost knows of its shards
// without waiting on any of them: each shard's membership as its replica has
// applied it, leader and term (a copy Dragonboat keeps for such reads).
package raftinfo

import "github.com/lni/dragonboat/v4"

// Shards returns what the NodeHost knows of each shard it runs (none once it
// is closed).
func Shards(nh *dragonboat.NodeHost) []dragonboat.ShardInfo {
	info := nh.GetNodeHostInfo(dragonboat.NodeHostInfoOption{SkipLogInfo: true})
	if info == nil {
		return nil
	}
	return info.ShardInfoList
}

// Shard returns what the NodeHost knows of one shard; ok is false when it
// does not run it.
func Shard(nh *dragonboat.NodeHost, shardID uint64) (si dragonboat.ShardInfo, ok bool) {
	for _, si := range Shards(nh) {
		if si.ShardID == shardID {
			return si, true
		}
	}
	return dragonboat.ShardInfo{}, false
}
