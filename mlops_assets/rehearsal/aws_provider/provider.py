"""TEST DOUBLE of hashicorp/aws: the resources and the data source that infra_tf/ uses,
each forwarding to the EC2 API (a moto server on loopback) through boto3.

The emulator's address comes from the environment exactly as boto3 and the real provider
read it (`AWS_ENDPOINT_URL_EC2` or `AWS_ENDPOINT_URL`), so infra_tf/'s HCL stays unchanged.
"""

from __future__ import annotations

import threading
from typing import Any, Optional

from ._vendor.tf.blocks import SetNestedBlock
from ._vendor.tf.iface import (
    Config,
    CreateContext,
    DataSource,
    DeleteContext,
    PlanContext,
    Provider,
    ReadDataContext,
    Resource,
    State,
    UpdateContext,
)
from ._vendor.tf.schema import Attribute, Block, Schema
from ._vendor.tf.types import Bool, List, Map, Number, Set, String, Unknown
from ._vendor.tf.utils import Diagnostics


def _tags_list(tags: Optional[dict]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in sorted((tags or {}).items())]


def _tags_dict(tags: Optional[list]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in tags or []}


def _known(value: Any) -> Any:
    return None if value is Unknown else value


def _error_code(exc: Exception) -> str:
    return getattr(exc, "response", {}).get("Error", {}).get("Code", "")


def _computed(name: str, type_=None) -> Attribute:
    return Attribute(name, type_ or String(), computed=True)


def _tag_attributes() -> list[Attribute]:
    return [
        Attribute("tags", Map(String()), optional=True, description="Tags of the resource."),
        Attribute("tags_all", Map(String()), computed=True, description="All tags (no default_tags here)."),
    ]


class AwsTestDouble(Provider):
    """The provider: configuration (`region`) and the boto3 client every resource uses."""

    def __init__(self) -> None:
        self.region: Optional[str] = None
        self._ec2 = None
        self._lock = threading.Lock()

    def get_model_prefix(self) -> str:
        return "aws_"

    def full_name(self) -> str:
        return "registry.terraform.io/hashicorp/aws"

    def get_provider_schema(self, diags: Diagnostics) -> Schema:
        return Schema(
            version=0,
            attributes=[
                Attribute("region", String(), optional=True, description="AWS region (else AWS_REGION)."),
            ]
        )

    def validate_config(self, diags: Diagnostics, config: Config) -> None:
        pass

    def configure_provider(self, diags: Diagnostics, config: Config) -> None:
        self.region = _known(config.get("region"))

    def ec2(self):
        # OpenTofu calls in parallel (10 threads): build one client, once.
        with self._lock:
            if self._ec2 is None:
                import boto3

                self._ec2 = boto3.client("ec2", region_name=self.region)
        return self._ec2

    def get_data_sources(self) -> list:
        return [AmiDataSource]

    def get_resources(self) -> list:
        return [KeyPair, SecurityGroup, SecurityGroupIngressRule, SecurityGroupEgressRule, Instance]


class _Ec2Resource(Resource):
    """Shared plumbing: the client, tag updates, and plans that keep tags_all in step."""

    def __init__(self, provider: AwsTestDouble) -> None:
        self.provider = provider

    @property
    def ec2(self):
        return self.provider.ec2()

    def plan(self, ctx: PlanContext, current: Optional[State], planned: State) -> Optional[State]:
        if "tags" in ctx.changed_fields:
            planned["tags_all"] = dict(planned.get("tags") or {})
        return planned

    def _tag_specifications(self, resource_type: str, planned: State) -> list[dict]:
        tags = planned.get("tags") or {}
        return [{"ResourceType": resource_type, "Tags": _tags_list(tags)}] if tags else []

    def _sync_tags(self, resource_id: str, old: Optional[dict], new: Optional[dict]) -> None:
        old, new = old or {}, new or {}
        removed = [{"Key": k} for k in old if k not in new]
        if removed:
            self.ec2.delete_tags(Resources=[resource_id], Tags=removed)
        changed = {k: v for k, v in new.items() if old.get(k) != v}
        if changed:
            self.ec2.create_tags(Resources=[resource_id], Tags=_tags_list(changed))

    def _fail(self, ctx, action: str, exc: Exception) -> None:
        ctx.diagnostics.add_error(f"{ctx.type_name}: {action} failed", str(exc))


# -- aws_key_pair --------------------------------------------------------------------------
class KeyPair(_Ec2Resource):
    @classmethod
    def get_name(cls) -> str:
        return "key_pair"

    @classmethod
    def get_schema(cls) -> Schema:
        return Schema(
            version=0,
            attributes=[
                _computed("id"),
                Attribute("key_name", String(), required=True, requires_replace=True),
                Attribute("public_key", String(), required=True, requires_replace=True),
                _computed("key_pair_id"),
                _computed("fingerprint"),
                _computed("key_type"),
                _computed("arn"),
                *_tag_attributes(),
            ]
        )

    def create(self, ctx: CreateContext, planned: State) -> Optional[State]:
        try:
            self.ec2.import_key_pair(
                KeyName=planned["key_name"],
                PublicKeyMaterial=planned["public_key"],
                TagSpecifications=self._tag_specifications("key-pair", planned),
            )
        except Exception as exc:  # surfaced to OpenTofu as a diagnostic
            self._fail(ctx, "ImportKeyPair", exc)
            return None
        return self.read(ctx, planned)

    def read(self, ctx, current: State) -> Optional[State]:
        try:
            pairs = self.ec2.describe_key_pairs(KeyNames=[current["key_name"]])["KeyPairs"]
        except Exception as exc:
            if _error_code(exc) == "InvalidKeyPair.NotFound":
                return None
            raise
        pair = pairs[0]
        region = self.ec2.meta.region_name
        return {
            **current,
            "id": pair["KeyName"],
            "key_name": pair["KeyName"],
            "key_pair_id": pair["KeyPairId"],
            "fingerprint": pair.get("KeyFingerprint"),
            "key_type": pair.get("KeyType"),
            "arn": f"arn:aws:ec2:{region}:000000000000:key-pair/{pair['KeyName']}",
            "tags": _tags_dict(pair.get("Tags")) or current.get("tags"),
            "tags_all": _tags_dict(pair.get("Tags")),
        }

    def update(self, ctx: UpdateContext, current: State, planned: State) -> Optional[State]:
        self._sync_tags(current["key_pair_id"], current.get("tags"), planned.get("tags"))
        return self.read(ctx, planned)

    def delete(self, ctx: DeleteContext, current: State):
        self.ec2.delete_key_pair(KeyName=current["key_name"])
        return None


# -- aws_security_group --------------------------------------------------------------------
class SecurityGroup(_Ec2Resource):
    @classmethod
    def get_name(cls) -> str:
        return "security_group"

    @classmethod
    def get_schema(cls) -> Schema:
        return Schema(
            version=0,
            attributes=[
                _computed("id"),
                _computed("arn"),
                _computed("owner_id"),
                Attribute("name", String(), required=True, requires_replace=True),
                Attribute(
                    "description",
                    String(),
                    optional=True,
                    computed=True,
                    requires_replace=True,
                    default="Managed by Terraform",
                ),
                Attribute("vpc_id", String(), optional=True, computed=True, requires_replace=True),
                *_tag_attributes(),
            ]
        )

    def create(self, ctx: CreateContext, planned: State) -> Optional[State]:
        args = {"GroupName": planned["name"], "Description": planned["description"]}
        if _known(planned.get("vpc_id")):
            args["VpcId"] = planned["vpc_id"]
        try:
            group_id = self.ec2.create_security_group(
                **args, TagSpecifications=self._tag_specifications("security-group", planned)
            )["GroupId"]
        except Exception as exc:
            self._fail(ctx, "CreateSecurityGroup", exc)
            return None
        # As the real provider does: remove AWS's default allow-all egress rule, so that
        # egress is exactly what the configuration declares.
        group = self.ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"][0]
        if group.get("IpPermissionsEgress"):
            self.ec2.revoke_security_group_egress(GroupId=group_id, IpPermissions=group["IpPermissionsEgress"])
        return self.read(ctx, {**planned, "id": group_id})

    def read(self, ctx, current: State) -> Optional[State]:
        try:
            groups = self.ec2.describe_security_groups(GroupIds=[current["id"]])["SecurityGroups"]
        except Exception as exc:
            if _error_code(exc) == "InvalidGroup.NotFound":
                return None
            raise
        group = groups[0]
        region = self.ec2.meta.region_name
        tags = _tags_dict(group.get("Tags"))
        return {
            **current,
            "id": group["GroupId"],
            "arn": f"arn:aws:ec2:{region}:{group['OwnerId']}:security-group/{group['GroupId']}",
            "owner_id": group["OwnerId"],
            "name": group["GroupName"],
            "description": group["Description"],
            "vpc_id": group.get("VpcId"),
            "tags": tags or current.get("tags"),
            "tags_all": tags,
        }

    def update(self, ctx: UpdateContext, current: State, planned: State) -> Optional[State]:
        self._sync_tags(current["id"], current.get("tags"), planned.get("tags"))
        return self.read(ctx, planned)

    def delete(self, ctx: DeleteContext, current: State):
        try:
            self.ec2.delete_security_group(GroupId=current["id"])
        except Exception as exc:
            if _error_code(exc) != "InvalidGroup.NotFound":
                self._fail(ctx, "DeleteSecurityGroup", exc)
        return None


# -- aws_vpc_security_group_{ingress,egress}_rule ------------------------------------------
class _SecurityGroupRule(_Ec2Resource):
    egress = False

    @classmethod
    def get_schema(cls) -> Schema:
        def arg(name, type_):
            return Attribute(name, type_, optional=True, requires_replace=True)

        return Schema(
            version=0,
            attributes=[
                _computed("id"),
                _computed("arn"),
                _computed("security_group_rule_id"),
                Attribute("security_group_id", String(), required=True, requires_replace=True),
                Attribute("ip_protocol", String(), required=True, requires_replace=True),
                arg("description", String()),
                arg("from_port", Number()),
                arg("to_port", Number()),
                arg("cidr_ipv4", String()),
                arg("cidr_ipv6", String()),
                arg("prefix_list_id", String()),
                arg("referenced_security_group_id", String()),
                *_tag_attributes(),
            ]
        )

    def validate(self, diags: Diagnostics, type_name: str, config: Config):
        super().validate(diags, type_name, config)
        sources = [k for k in ("cidr_ipv4", "cidr_ipv6", "prefix_list_id", "referenced_security_group_id") if config.get(k)]
        if len(sources) != 1:
            diags.add_error(
                f"{type_name}: exactly one of cidr_ipv4, cidr_ipv6, prefix_list_id, referenced_security_group_id",
                f"got {sources or 'none'}",
            )

    def _permission(self, state: State) -> dict:
        permission: dict[str, Any] = {"IpProtocol": state["ip_protocol"]}
        if state.get("from_port") is not None:
            permission["FromPort"] = int(state["from_port"])
        if state.get("to_port") is not None:
            permission["ToPort"] = int(state["to_port"])
        described = {"Description": state["description"]} if state.get("description") else {}
        if state.get("cidr_ipv4"):
            permission["IpRanges"] = [{"CidrIp": state["cidr_ipv4"], **described}]
        if state.get("cidr_ipv6"):
            permission["Ipv6Ranges"] = [{"CidrIpv6": state["cidr_ipv6"], **described}]
        if state.get("prefix_list_id"):
            permission["PrefixListIds"] = [{"PrefixListId": state["prefix_list_id"], **described}]
        if state.get("referenced_security_group_id"):
            permission["UserIdGroupPairs"] = [{"GroupId": state["referenced_security_group_id"], **described}]
        return permission

    def create(self, ctx: CreateContext, planned: State) -> Optional[State]:
        authorize = self.ec2.authorize_security_group_egress if self.egress else self.ec2.authorize_security_group_ingress
        try:
            response = authorize(
                GroupId=planned["security_group_id"],
                IpPermissions=[self._permission(planned)],
                TagSpecifications=self._tag_specifications("security-group-rule", planned),
            )
        except Exception as exc:
            self._fail(ctx, "AuthorizeSecurityGroup" + ("Egress" if self.egress else "Ingress"), exc)
            return None
        rule_id = response["SecurityGroupRules"][0]["SecurityGroupRuleId"]
        return self.read(ctx, {**planned, "id": rule_id})

    def read(self, ctx, current: State) -> Optional[State]:
        try:
            rules = self.ec2.describe_security_group_rules(SecurityGroupRuleIds=[current["id"]])["SecurityGroupRules"]
        except Exception as exc:
            if _error_code(exc) in ("InvalidSecurityGroupRuleId.NotFound", "InvalidGroup.NotFound"):
                return None
            raise
        if not rules:
            return None
        rule = rules[0]
        region = self.ec2.meta.region_name
        tags = _tags_dict(rule.get("Tags"))
        referenced = (rule.get("ReferencedGroupInfo") or {}).get("GroupId")
        return {
            **current,
            "id": rule["SecurityGroupRuleId"],
            "security_group_rule_id": rule["SecurityGroupRuleId"],
            "arn": f"arn:aws:ec2:{region}:000000000000:security-group-rule/{rule['SecurityGroupRuleId']}",
            "security_group_id": rule["GroupId"],
            "ip_protocol": rule["IpProtocol"],
            "from_port": rule.get("FromPort", current.get("from_port")),
            "to_port": rule.get("ToPort", current.get("to_port")),
            "cidr_ipv4": rule.get("CidrIpv4"),
            "cidr_ipv6": rule.get("CidrIpv6"),
            "prefix_list_id": rule.get("PrefixListId"),
            "referenced_security_group_id": referenced,
            # moto drops the description of group-referencing rules; keep the declared one.
            "description": rule.get("Description") or current.get("description"),
            "tags": tags or current.get("tags"),
            "tags_all": tags,
        }

    def update(self, ctx: UpdateContext, current: State, planned: State) -> Optional[State]:
        self._sync_tags(current["id"], current.get("tags"), planned.get("tags"))
        return self.read(ctx, planned)

    def delete(self, ctx: DeleteContext, current: State):
        revoke = self.ec2.revoke_security_group_egress if self.egress else self.ec2.revoke_security_group_ingress
        try:
            revoke(GroupId=current["security_group_id"], IpPermissions=[self._permission(current)])
        except Exception as exc:
            if _error_code(exc) not in ("InvalidPermission.NotFound", "InvalidGroup.NotFound"):
                self._fail(ctx, "RevokeSecurityGroup" + ("Egress" if self.egress else "Ingress"), exc)
        return None


class SecurityGroupIngressRule(_SecurityGroupRule):
    egress = False

    @classmethod
    def get_name(cls) -> str:
        return "vpc_security_group_ingress_rule"


class SecurityGroupEgressRule(_SecurityGroupRule):
    egress = True

    @classmethod
    def get_name(cls) -> str:
        return "vpc_security_group_egress_rule"


# -- aws_instance --------------------------------------------------------------------------
_METADATA_FIELDS = {
    "http_endpoint": "HttpEndpoint",
    "http_tokens": "HttpTokens",
    "http_put_response_hop_limit": "HttpPutResponseHopLimit",
}


class Instance(_Ec2Resource):
    @classmethod
    def get_name(cls) -> str:
        return "instance"

    @classmethod
    def get_schema(cls) -> Schema:
        def replace(name, type_, **kw):
            return Attribute(name, type_, optional=True, requires_replace=True, **kw)

        return Schema(
            version=0,
            attributes=[
                _computed("id"),
                _computed("arn"),
                _computed("public_ip"),
                _computed("private_ip"),
                _computed("public_dns"),
                _computed("private_dns"),
                _computed("instance_state"),
                _computed("availability_zone"),
                Attribute("ami", String(), required=True, requires_replace=True),
                Attribute("instance_type", String(), required=True, requires_replace=True),
                replace("key_name", String()),
                replace("subnet_id", String(), computed=True),
                replace("vpc_security_group_ids", Set(String()), computed=True),
                replace("associate_public_ip_address", Bool(), computed=True),
                replace("monitoring", Bool()),
                replace("ebs_optimized", Bool(), computed=True),
                *_tag_attributes(),
            ],
            block_types=[
                SetNestedBlock(
                    "metadata_options",
                    Block(
                        attributes=[
                            Attribute("http_endpoint", String(), optional=True),
                            Attribute("http_tokens", String(), optional=True),
                            Attribute("http_put_response_hop_limit", Number(), optional=True),
                        ]
                    ),
                ),
                SetNestedBlock(
                    "root_block_device",
                    Block(
                        attributes=[
                            Attribute("encrypted", Bool(), optional=True),
                            Attribute("volume_type", String(), optional=True),
                            Attribute("volume_size", Number(), optional=True),
                            Attribute("delete_on_termination", Bool(), optional=True),
                        ]
                    ),
                ),
            ],
        )

    def create(self, ctx: CreateContext, planned: State) -> Optional[State]:
        args: dict[str, Any] = {
            "ImageId": planned["ami"],
            "InstanceType": planned["instance_type"],
            "MinCount": 1,
            "MaxCount": 1,
            "TagSpecifications": self._tag_specifications("instance", planned),
        }
        if planned.get("key_name"):
            args["KeyName"] = planned["key_name"]
        if _known(planned.get("vpc_security_group_ids")):
            args["SecurityGroupIds"] = list(planned["vpc_security_group_ids"])
        if _known(planned.get("subnet_id")):
            args["SubnetId"] = planned["subnet_id"]
        else:
            # As EC2 does: no subnet given means the default subnet of the default VPC
            # (moto alone would invent an address outside any subnet).
            subnets = self.ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])["Subnets"]
            if subnets:
                args["SubnetId"] = min(subnets, key=lambda s: s["AvailabilityZone"])["SubnetId"]
        if planned.get("monitoring") is not None:
            args["Monitoring"] = {"Enabled": bool(planned["monitoring"])}
        if _known(planned.get("ebs_optimized")) is not None:
            args["EbsOptimized"] = bool(planned["ebs_optimized"])
        metadata = (planned.get("metadata_options") or [None])[0]
        if metadata:
            args["MetadataOptions"] = {
                api: (int(metadata[k]) if k == "http_put_response_hop_limit" else metadata[k])
                for k, api in _METADATA_FIELDS.items()
                if metadata.get(k) is not None
            }
        root = (planned.get("root_block_device") or [None])[0]
        if root:
            ebs = {
                "Encrypted": root.get("encrypted"),
                "VolumeType": root.get("volume_type"),
                "VolumeSize": int(root["volume_size"]) if root.get("volume_size") is not None else None,
                "DeleteOnTermination": root.get("delete_on_termination"),
            }
            args["BlockDeviceMappings"] = [
                {"DeviceName": "/dev/xvda", "Ebs": {k: v for k, v in ebs.items() if v is not None}}
            ]
        try:
            instance = self.ec2.run_instances(**args)["Instances"][0]
        except Exception as exc:
            self._fail(ctx, "RunInstances", exc)
            return None
        state = self.read(ctx, {**planned, "id": instance["InstanceId"]})
        if state is not None and planned.get("associate_public_ip_address") is not None:
            state["associate_public_ip_address"] = planned["associate_public_ip_address"]
        return state

    def read(self, ctx, current: State) -> Optional[State]:
        try:
            reservations = self.ec2.describe_instances(InstanceIds=[current["id"]])["Reservations"]
        except Exception as exc:
            if _error_code(exc) == "InvalidInstanceID.NotFound":
                return None
            raise
        instances = [i for r in reservations for i in r["Instances"]]
        if not instances or instances[0]["State"]["Name"] in ("terminated", "shutting-down"):
            return None
        instance = instances[0]
        tags = _tags_dict(instance.get("Tags"))
        state = {
            **current,
            "id": instance["InstanceId"],
            "arn": f"arn:aws:ec2:{self.ec2.meta.region_name}:000000000000:instance/{instance['InstanceId']}",
            "public_ip": instance.get("PublicIpAddress"),
            "private_ip": instance.get("PrivateIpAddress"),
            "public_dns": instance.get("PublicDnsName"),
            "private_dns": instance.get("PrivateDnsName"),
            "instance_state": instance["State"]["Name"],
            "availability_zone": instance.get("Placement", {}).get("AvailabilityZone"),
            "ami": instance["ImageId"],
            "instance_type": instance["InstanceType"],
            "key_name": instance.get("KeyName"),
            "subnet_id": instance.get("SubnetId"),
            "vpc_security_group_ids": sorted(g["GroupId"] for g in instance.get("SecurityGroups", [])),
            "ebs_optimized": bool(instance.get("EbsOptimized")),
            "tags": tags or current.get("tags"),
            "tags_all": tags,
        }
        if current.get("monitoring") is not None:
            state["monitoring"] = instance.get("Monitoring", {}).get("State") in ("enabled", "pending")
        if _known(current.get("associate_public_ip_address")) is None:
            state["associate_public_ip_address"] = bool(instance.get("PublicIpAddress"))
        state["metadata_options"] = self._read_metadata(instance, current)
        state["root_block_device"] = self._read_root_device(instance, current)
        return state

    def _read_metadata(self, instance: dict, current: State) -> list:
        declared = (current.get("metadata_options") or [None])[0]
        if not declared:
            return current.get("metadata_options") or []
        actual = instance.get("MetadataOptions") or {}
        return [{k: actual.get(api, declared.get(k)) if declared.get(k) is not None else None for k, api in _METADATA_FIELDS.items()}]

    def _read_root_device(self, instance: dict, current: State) -> list:
        declared = (current.get("root_block_device") or [None])[0]
        if not declared:
            return current.get("root_block_device") or []
        mappings = instance.get("BlockDeviceMappings") or []
        if not mappings:
            return [declared]
        volume_id = mappings[0]["Ebs"]["VolumeId"]
        volume = self.ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]
        actual = {
            "encrypted": volume.get("Encrypted"),
            "volume_type": volume.get("VolumeType"),
            "volume_size": volume.get("Size"),
            "delete_on_termination": mappings[0]["Ebs"].get("DeleteOnTermination"),
        }
        return [{k: (actual[k] if actual.get(k) is not None else v) if v is not None else None for k, v in declared.items()}]

    def update(self, ctx: UpdateContext, current: State, planned: State) -> Optional[State]:
        self._sync_tags(current["id"], current.get("tags"), planned.get("tags"))
        metadata = (planned.get("metadata_options") or [None])[0]
        if metadata and metadata != (current.get("metadata_options") or [None])[0]:
            self.ec2.modify_instance_metadata_options(
                InstanceId=current["id"],
                **{
                    api: (int(metadata[k]) if k == "http_put_response_hop_limit" else metadata[k])
                    for k, api in _METADATA_FIELDS.items()
                    if metadata.get(k) is not None
                },
            )
        if planned.get("root_block_device") != current.get("root_block_device"):
            ctx.diagnostics.add_error(
                "aws_instance: the test double cannot change root_block_device in place",
                "Taint the instance (tofu apply -replace=...) to rebuild it.",
            )
            return current
        return self.read(ctx, planned)

    def delete(self, ctx: DeleteContext, current: State):
        try:
            self.ec2.terminate_instances(InstanceIds=[current["id"]])
        except Exception as exc:
            if _error_code(exc) != "InvalidInstanceID.NotFound":
                self._fail(ctx, "TerminateInstances", exc)
        return None


# -- data "aws_ami" ------------------------------------------------------------------------
class AmiDataSource(DataSource):
    def __init__(self, provider: AwsTestDouble) -> None:
        self.provider = provider

    @classmethod
    def get_name(cls) -> str:
        return "ami"

    @classmethod
    def get_schema(cls) -> Schema:
        return Schema(
            version=0,
            attributes=[
                Attribute("most_recent", Bool(), optional=True),
                Attribute("owners", List(String()), optional=True),
                Attribute("name_regex", String(), optional=True),
                _computed("id"),
                _computed("image_id"),
                _computed("name"),
                _computed("arn"),
                _computed("owner_id"),
                _computed("architecture"),
                _computed("creation_date"),
                _computed("root_device_name"),
                _computed("virtualization_type"),
            ],
            block_types=[
                SetNestedBlock(
                    "filter",
                    Block(
                        attributes=[
                            Attribute("name", String(), required=True),
                            Attribute("values", Set(String()), required=True),
                        ]
                    ),
                )
            ],
        )

    def read(self, ctx: ReadDataContext, config: Config) -> Optional[State]:
        import re

        args: dict[str, Any] = {}
        if config.get("owners"):
            args["Owners"] = list(config["owners"])
        filters = [{"Name": f["name"], "Values": list(f["values"])} for f in config.get("filter") or []]
        if filters:
            args["Filters"] = filters
        try:
            images = self.provider.ec2().describe_images(**args)["Images"]
        except Exception as exc:
            ctx.diagnostics.add_error("data.aws_ami: DescribeImages failed", str(exc))
            return None
        if config.get("name_regex"):
            images = [i for i in images if re.search(config["name_regex"], i.get("Name", ""))]
        if not images:
            ctx.diagnostics.add_error("Your query returned no results. Please change your search criteria and try again.")
            return None
        if len(images) > 1 and not config.get("most_recent"):
            ctx.diagnostics.add_error("Your query returned more than one result. Please try a more specific search criteria, or set `most_recent` attribute to true.")
            return None
        image = max(images, key=lambda i: i.get("CreationDate", ""))
        region = self.provider.ec2().meta.region_name
        return {
            **config,
            "id": image["ImageId"],
            "image_id": image["ImageId"],
            "name": image.get("Name"),
            "arn": f"arn:aws:ec2:{region}::image/{image['ImageId']}",
            "owner_id": image.get("OwnerId"),
            "architecture": image.get("Architecture"),
            "creation_date": image.get("CreationDate"),
            "root_device_name": image.get("RootDeviceName"),
            "virtualization_type": image.get("VirtualizationType"),
        }
