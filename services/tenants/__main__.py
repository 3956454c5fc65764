from services.common.service import main
from services.tenants.service import setup

if __name__ == "__main__":
    main("tenants", setup)
