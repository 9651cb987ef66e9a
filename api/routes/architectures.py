"""Architectures: the bodies a job can train, and whether this server holds ImageNet weights for each."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import ProjectDep
from api.schemas import ArchitecturePublic, ArchitecturesPublic
from core.engine.architectures import ARCHITECTURES, imagenet_weights
from core.jobs.spec import DEFAULT_ARCH

router = APIRouter(prefix="/architectures", tags=["architectures"])


@router.get("")
def list_architectures(_: ProjectDep) -> ArchitecturesPublic:
    """Each architecture, whether `pretrained: "imagenet"` works with it here, and which one is the default."""
    data = [
        ArchitecturePublic(
            name=a.name,
            imagenet_weights=imagenet_weights(a) is not None,
            default=a.name == DEFAULT_ARCH,
            layer_groups=len(a.split_at) + 2,
        )
        for a in ARCHITECTURES.values()
    ]
    return ArchitecturesPublic(data=data, count=len(data))
