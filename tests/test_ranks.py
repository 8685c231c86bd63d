"""mpt.ranks: which rank this process is, with and without a process group."""

from mpt.ranks import launch_env, rank_world


def test_without_a_process_group_only_a_data_loader_reads_torchruns_rank(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert launch_env() == (3, 4, 1)
    assert rank_world() == (0, 1)  # no process group: a collective-free single process
    assert rank_world(from_env=True) == (3, 4)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name)
    assert launch_env() == (0, 1, 0) and rank_world(from_env=True) == (0, 1)


def test_an_initialised_process_group_decides(tmp_path, monkeypatch):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    monkeypatch.setenv("RANK", "3")  # the launcher's variables lose to the group that exists
    monkeypatch.setenv("WORLD_SIZE", "4")
    try:
        assert rank_world() == rank_world(from_env=True) == (0, 1)
    finally:
        dist.destroy_process_group()
