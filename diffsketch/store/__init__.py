"""The feature store and the `sample` stage that fills it.

In: ``core`` and ``diffusion``. Out: the Zarr store of sampled trajectories (and the layout the
pairs store shares), :func:`~diffsketch.store.collect.run_sample`, verify and repair
(``diffsketch inspect``), and the disk-space projection checked before a run starts.

Public names (imported on first use, so importing the package costs nothing):

- :mod:`~diffsketch.store.zarr_store`: ``PAIR``, ``StoreError``, ``CorruptStoreError``, ``StoreBusyError``, ``compressors``, ``summary``
- :mod:`~diffsketch.store.collect`: ``SampleInputError``, ``run_sample``
- :mod:`~diffsketch.store.integrity`: ``verify``, ``repair``
- :mod:`~diffsketch.store.xarray_view`: ``open_dataset`` (a store group as an xarray Dataset, damage refused)
- :mod:`~diffsketch.store.diskspace`: ``DiskSpaceError``, ``DiskFullError``
- :mod:`~diffsketch.store.kept`: ``kept_stores``, ``replace_other_key``, ``resume_kept``, ``take_back``

Modules used as namespaces: ``zarr_store``, ``diskspace``.
"""

from diffsketch.core import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    submodules=["zarr_store", "diskspace"],
    submod_attrs={
        "zarr_store": ["PAIR", "StoreError", "CorruptStoreError", "StoreBusyError", "compressors", "summary"],
        "collect": ["SampleInputError", "run_sample"],
        "integrity": ["verify", "repair"],
        "xarray_view": ["open_dataset"],
        "diskspace": ["DiskSpaceError", "DiskFullError"],
        "kept": ["kept_stores", "replace_other_key", "resume_kept", "take_back"],
    },
)
