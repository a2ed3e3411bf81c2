import gc

from affectstream.streaming.worker import heap, metrics


def pause_count(generation: int) -> float:
    return metrics.REGISTRY.get_sample_value("affectstream_gc_pause_seconds_count", {"generation": str(generation)}) or 0


def test_frozen_startup_objects_are_out_of_the_collectors_reach():
    kept = [[i] for i in range(1000)]  # start-up state the worker keeps
    try:
        frozen = heap.freeze_startup_heap()
        # frozen objects that reference counting frees afterwards (another thread's, say) leave the count,
        # so it can only have fallen since
        assert frozen >= gc.get_freeze_count() >= len(kept)
        assert not any(gc.is_tracked(x) and any(x is o for o in gc.get_objects(2)) for x in kept[:5])
    finally:
        gc.unfreeze()


def test_collections_are_timed_by_generation_once_however_often_installed():
    heap.time_collections()
    heap.time_collections()
    assert gc.callbacks.count(heap._time_collection) == 1
    before = pause_count(2)
    gc.collect()
    assert pause_count(2) == before + 1
